"""A developer's own driver under hot-add, beside the probe (`--with-module`, `--with-driver`).

The probe says what the OS delivered; the developer's driver is what is under test. It is
installed and started before or after the probe (`DriverOrder`), checked after its load and
after every add (still loaded? the guest's health is the machine's console watch, which ends
the run on a panic or a hang with the stage it was in), stopped in reverse order, and, if it
writes records (its own stream, named after it: docs/record-format.md "Streams"), judged by
the oracle beside the probe's. After a crash the console's copy of its records is kept and the
module the crash report blames is named.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import InputError
from harness.guests import registry
from harness.guests.base import DriverPackage, GuestKind, Session
from harness.oracle import HostFacts, Severity, Verdict, check
from harness.oracle import Profile as OracleProfile
from harness.progress import Progress
from harness.records import parse_records

_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def parse_param(text: str, option: str) -> tuple[str, str]:
    """NAME=VALUE of --with-module-param / --with-driver-param."""
    name, eq, value = text.partition("=")
    if not eq or not _PARAM_NAME.fullmatch(name):
        raise InputError(f"{option} {text!r} is not NAME=VALUE with NAME a parameter name",
                         f"write it as {option} NAME=VALUE, e.g. {option} size_by=online")
    return name, value


def check_package(kind: type[GuestKind], driver: DriverPackage) -> None:
    """What can be checked before anything is built or booted: the option fits the guest,
    the file exists and has the right type, the parameters are well formed. The guest kind's
    `check_driver` then checks the rest against its image (kernel version, parameter names)."""
    option, suffix = kind.own_driver.option, kind.own_driver.suffix
    if driver.path.suffix.lower() != suffix:
        others = " or ".join(f"use {k.own_driver.option} with --guest {k.name}"
                             for k in registry.kinds() if k is not kind)
        raise InputError(f"{option} {driver.path}: the {kind.name} guest loads {suffix} files",
                         f"give a {suffix} file" + (f", or {others}" if others else ""))
    if not driver.path.is_file():
        raise InputError(f"{option} {driver.path}: no such file",
                         "give the path of your built driver")
    names = [k for k, _ in driver.params]
    dup = sorted({k for k in names if names.count(k) > 1})
    if dup:
        raise InputError(f"{option}-param {', '.join(dup)} given more than once",
                         "give each parameter once")
    kind.check_driver_file(driver)


def stream_file(writer: str) -> str:
    """The run directory's records file of one writer (the probe's stays records.jsonl)."""
    return f"records-{writer}.jsonl"


@dataclass(frozen=True)
class DriverCheck:
    """Whether the driver was still loaded after one step ("load", "add 1", ...)."""

    after: str
    running: bool

    def describe(self, name: str) -> str:
        return f"after {self.after}: {name} " + ("loaded" if self.running else "VANISHED")


@dataclass(frozen=True)
class StreamResult:
    """One writer's records and the oracle's verdict on them (None: it wrote none)."""

    writer: str
    file: str
    records: int
    verdict: Verdict | None

    @property
    def passed(self) -> bool:
        return self.verdict is None or self.verdict.passed


@dataclass(frozen=True)
class DriverReport:
    """What became of the developer's driver in one run (result.json's "driver")."""

    driver: DriverPackage
    checks: tuple[DriverCheck, ...]
    streams: tuple[StreamResult, ...]
    faulting_module: str | None = None  # what a crash report blamed, if it named a module

    @property
    def passed(self) -> bool:
        return all(c.running for c in self.checks) and all(s.passed for s in self.streams)

    def describe(self) -> str:
        d = self.driver
        lines = [f"driver under test: {d.name} ({d.path.name}, loaded {d.order.value} the "
                 f"probe{', ' + ' '.join(f'{k}={v}' for k, v in d.params) if d.params else ''})"]
        lines += [f"  {c.describe(d.name)}" for c in self.checks]
        for s in self.streams:
            verdict = ("no records" if s.verdict is None else
                       f"{'PASS' if s.verdict.passed else 'FAIL'} ({s.records} records, "
                       f"{s.verdict.count(Severity.FAIL)} fail)")
            lines.append(f"  records of {s.writer} ({s.file}): {verdict}")
            if s.verdict is not None:
                lines += [f"    [{f.severity.value}] {f.rule_id}: {f.message}"
                          for f in s.verdict.findings]
        if self.faulting_module:
            lines.append(f"  the crash report blames: {self.faulting_module}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = self.driver
        return {
            "name": d.name, "path": str(d.path), "order": d.order.value,
            "params": {k: v for k, v in d.params},
            "passed": self.passed,
            "checks": [{"after": c.after, "running": c.running} for c in self.checks],
            "streams": [{"writer": s.writer, "file": s.file, "records": s.records,
                         "verdict": s.verdict.to_dict() if s.verdict else None}
                        for s in self.streams],
            "faulting_module": self.faulting_module,
        }


class DriverUnderTest:
    """The developer's driver through one attempt; `Attempt` calls these at its steps."""

    def __init__(self, driver: DriverPackage, kind: GuestKind, progress: Progress,
                 run_dir: Path) -> None:
        self.driver = driver
        self.kind = kind
        self.progress = progress
        self.run_dir = run_dir
        self.checks: list[DriverCheck] = []
        self.streams: list[StreamResult] = []
        self.faulting_module: str | None = None
        self.started = False
        self.stopped = False

    def load(self, session: Session) -> None:
        d = self.driver
        with self.progress.stage("load driver", f"{d.name} ({d.path.name})"):
            session.install_driver(d)
            self.started = True  # from here a crash may be the driver's
            session.start_driver(d)
        self.after("load", session)

    def after(self, step: str, session: Session) -> None:
        """Note whether the driver is still loaded after `step`, and say so."""
        check_ = DriverCheck(step, session.driver_running(self.driver))
        self.checks.append(check_)
        self.progress.say(check_.describe(self.driver.name))

    def unload(self, session: Session) -> None:
        if not self.started or self.stopped:
            return
        self.stopped = True
        if self.checks and not self.checks[-1].running:
            return  # it is gone already: nothing to stop
        with self.progress.stage("unload driver", self.driver.name):
            session.stop_driver(self.driver)

    def collect(self, session: Session, profile: OracleProfile, facts: HostFacts) -> None:
        """Its records (if it writes any) into their own file, judged like the probe's."""
        if not self.started:
            return
        with self.progress.stage("collect driver", f"{self.driver.name}'s records"):
            self._judge(session.driver_records(self.driver), profile, facts)

    def after_crash(self, serial_text: str, excerpt: str | None) -> None:
        """The transport is gone: keep the console's copy of its records, and the module the
        crash report blames."""
        if not self.started:
            return
        if excerpt:
            self.faulting_module = self.kind.faulting_module(excerpt)
        text = self.kind.console_driver_records(serial_text, self.driver)
        if text:
            self._write(text)

    def _write(self, text: str) -> str:
        name = stream_file(self.driver.name)
        (self.run_dir / name).write_text(text)
        return name

    def _judge(self, text: str, profile: OracleProfile, facts: HostFacts) -> None:
        if not text:
            self.streams.append(StreamResult(self.driver.name, "", 0, None))
            return
        name = self._write(text)
        records = parse_records(text.splitlines())
        self.streams.append(StreamResult(self.driver.name, name, len(records),
                                         check(records, profile, facts)))

    def report(self) -> DriverReport:
        return DriverReport(self.driver, tuple(self.checks), tuple(self.streams),
                            self.faulting_module)


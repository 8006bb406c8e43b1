"""A run's facts as JUnit XML properties (name, value), for CI dashboards and nightly triage.

The pytest plugin appends them to the test's `user_properties`; pytest's junitxml writes them
as `<property name=... value=...>` of the test case. Names are stable: `hotadd.<what>`. They
are read off the run's result.json as `harness.result_file` types it, so the properties say
exactly what the file says; `read_properties` reads a case's back (the matrix page's cells).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from harness.result import RunResult
from harness.result_file import ResultAdd, ResultFile, parse_result

_ADD_KEY = re.compile(r"hotadd\.add\.(\d+)\.(ost_ms|start_to_end_ms|end_state)$")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def describe_add(add: ResultAdd) -> str:
    """One add in a line: where it went and when each answer came (ms after setVcpu)."""
    cpu = f"CPU {add.guest_index}" if add.guest_index is not None else "no guest CPU"
    ost = "none" if add.ost_ms is None else f"{add.ost_ms:.1f} ms (status {add.ost_status})"
    return (f"vCPU {add.libvirt_vcpu} -> {cpu}: {add.end_state}; call {_ms(add.call_ms)} ms, "
            f"_OST {ost}, start ~{_ms(add.start_ms_approx)} ms, end ~{_ms(add.end_ms_approx)} ms")


def junit_properties(result: RunResult) -> list[tuple[str, str]]:
    """`result`'s properties, from its result.json content (`result_properties`)."""
    return result_properties(parse_result(result.to_dict()))


def result_properties(r: ResultFile) -> list[tuple[str, str]]:
    """Outcome, verdict, each finding, failed host checks, each add's latencies, the
    developer's driver (loaded after each step, its stream's verdict), versions."""
    props: list[tuple[str, str]] = [
        ("hotadd.outcome", r.outcome),
        ("hotadd.verdict", "none" if r.verdict is None else r.verdict.verdict),
        ("hotadd.guest", f"{r.scenario.guest}://{r.domain}"),
        ("hotadd.artifacts", str(r.run_dir)),
    ]
    if r.error:
        props.append(("hotadd.error", r.error))
    if r.verdict is not None:
        props.append(("hotadd.findings", str(len(r.verdict.findings))))
        for i, f in enumerate(r.verdict.findings, start=1):
            seqs = ",".join(str(s) for s in f.seqs) or "-"
            props.append((f"hotadd.finding.{i}",
                          f"{f.severity} {f.rule_id} [{f.source}] seq {seqs}: {f.message}"))
    for c in r.host_checks:
        if not c.passed:
            props.append((f"hotadd.host_check.{c.check_id}", f"{c.severity}: {c.message}"))
    for add in r.adds:
        key = f"hotadd.add.{add.index}"
        props += [(key, describe_add(add)), (f"{key}.end_state", add.end_state),
                  (f"{key}.ost_ms", _ms(add.ost_ms)),
                  (f"{key}.start_ms", _ms(add.start_ms_approx)),
                  (f"{key}.end_ms", _ms(add.end_ms_approx)),
                  (f"{key}.start_to_end_ms", _ms(add.start_to_end_ms))]
    if r.add_after_unload is not None:
        props.append(("hotadd.add_after_unload", describe_add(r.add_after_unload)))
    if r.driver is not None:
        d = r.driver
        props.append(("hotadd.driver", f"{d.name}: {'pass' if d.passed else 'fail'}"))
        props += [(f"hotadd.driver.after.{c.after.replace(' ', '_')}",
                   "loaded" if c.running else "vanished") for c in d.checks]
        props += [(f"hotadd.driver.stream.{s.writer}", "no records" if s.verdict is None
                   else s.verdict.verdict) for s in d.streams]
        if d.faulting_module:
            props.append(("hotadd.driver.faulting_module", d.faulting_module))
    props += [(f"hotadd.version.{k}", v) for k, v in sorted(r.versions.items())]
    props += [(f"hotadd.time.{k.replace(' ', '_')}", f"{v:.3f}")
              for k, v in r.timings_s.items()]
    return props


@dataclass(frozen=True)
class AddLatency:
    """One add's answers as its properties give them (text; "-": none)."""

    index: int
    end_state: str
    ost_ms: str
    start_to_end_ms: str


@dataclass(frozen=True)
class CaseProperties:
    """A test case's hotadd properties read back; absent ones as None, or as "none"/"-" where
    the page shows that."""

    outcome: str | None  # None: the case reported no run
    verdict: str
    worker: str  # the pytest-xdist worker (`hotadd.worker`, the matrix plugin's)
    artifacts: str | None
    error: str | None
    adds: tuple[AddLatency, ...]


def read_properties(props: Iterable[tuple[str, str]]) -> CaseProperties:
    """The hotadd properties among a test case's `props` (others are left out)."""
    named: dict[str, str] = {}
    adds: dict[int, dict[str, str]] = {}
    for name, value in props:
        named[name] = str(value)
        if (m := _ADD_KEY.match(name)) is not None:
            adds.setdefault(int(m.group(1)), {})[m.group(2)] = str(value)
    return CaseProperties(
        outcome=named.get("hotadd.outcome") or None,
        verdict=named.get("hotadd.verdict", "none"), worker=named.get("hotadd.worker", "-"),
        artifacts=named.get("hotadd.artifacts"), error=named.get("hotadd.error") or None,
        adds=tuple(AddLatency(i, a.get("end_state", "-"), a.get("ost_ms", "-"),
                              a.get("start_to_end_ms", "-")) for i, a in sorted(adds.items())))

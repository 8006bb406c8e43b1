"""result.json read back: the one typed view of a run's result file that every report uses
(`hotadd report`, the HTML run report and its timeline), instead of each reading raw dicts.

`harness.result.RunResult.to_dict` writes the file (schema `hotadd.result/1`); this module
reads it, possibly on another machine and from another hotadd version, so it imports nothing
of libvirt or the run. A key that is absent or null reads as absent (a run cut short, a pytest
test that failed before its run, an older file); a value of the wrong type is an InputError
naming the key, never a report built on a guess.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar, cast

from harness import __version__
from harness.errors import InputError

RESULT_SCHEMA = "hotadd.result/1"
RESULT_FILE = "result.json"
TEST_FILE = "test.json"  # written by the pytest plugin beside a test's run

T = TypeVar("T")


@dataclass(frozen=True)
class ResultFinding:
    """One oracle finding (`verdict.findings[]`)."""

    rule_id: str
    severity: str
    source: str
    statement: str
    message: str
    seqs: tuple[int, ...]


@dataclass(frozen=True)
class ResultEpisode:
    """One processor's Start and what closed it (`verdict.timeline[]`)."""

    nt_number: int
    start_t_ns: int
    end_state: str | None
    end_t_ns: int | None


@dataclass(frozen=True)
class ResultVerdict:
    verdict: str  # "pass" or "fail"
    records: int  # records judged
    fails: int
    warns: int
    findings: tuple[ResultFinding, ...]
    timeline: tuple[ResultEpisode, ...]


@dataclass(frozen=True)
class ResultHostCheck:
    check_id: str
    severity: str
    passed: bool
    message: str


@dataclass(frozen=True)
class ResultAdd:
    """One hot-add (`adds[]`, `add_after_unload`); ms after the host's call, `~` values on the
    guest's clock mapped to the host's (`ResultClock`)."""

    index: int
    libvirt_vcpu: int
    method: str
    socket: int | None  # QEMU's placement of the new CPU
    die: int | None
    core: int | None
    thread: int | None
    host_t_wall: float  # Unix time just before the host's call
    call_ms: float | None
    ost_status: int | None
    ost_ms: float | None
    guest_index: int | None
    end_state: str
    start_ms_approx: float | None
    end_ms_approx: float | None
    start_to_end_ms: float | None
    known_ms: float | None
    known_via: str
    known_gap_ms: float | None  # from the end record (mapped) to hotadd knowing it


@dataclass(frozen=True)
class ResultClock:
    """How guest times map to host time (`guest_clock`)."""

    t0_host_wall: float | None
    uncertainty_ms: float | None  # None: not measured
    method: str | None
    samples: int | None
    round_trip_ms: float | None
    consistent: bool


@dataclass(frozen=True)
class ResultStart:
    """Booted (cold) or restored from a saved guest (warm) (`start`)."""

    warm: bool
    key: str | None
    saved: bool
    note: str


@dataclass(frozen=True)
class ResultScenario:
    """What the reports show of the run's spec (`scenario`)."""

    guest: str | None
    boot_vcpus: int | None
    adds: int | None
    veto_index: int | None
    add_after_unload: bool


@dataclass(frozen=True)
class ResultDriverCheck:
    """Whether the developer's driver was still loaded after one step (`driver.checks[]`)."""

    after: str
    running: bool


@dataclass(frozen=True)
class ResultStream:
    """One writer's records and the oracle's verdict on them (`driver.streams[]`)."""

    writer: str
    file: str
    records: int
    verdict: ResultVerdict | None  # None: it wrote none


@dataclass(frozen=True)
class ResultDriver:
    """The developer's driver beside the probe (`driver`)."""

    name: str
    path: str
    order: str
    params: Mapping[str, str]
    passed: bool
    checks: tuple[ResultDriverCheck, ...]
    streams: tuple[ResultStream, ...]
    faulting_module: str | None


@dataclass(frozen=True)
class ResultInterruption:
    signal: str
    stage: str | None
    completed_stages: tuple[str, ...]


@dataclass(frozen=True)
class ResultFile:
    """A result.json as the reports read it."""

    schema: str | None
    outcome: str  # pass, fail, error, interrupted; "none" for a test that made no run
    exit_code: int | None
    domain: str | None
    run_dir: str | None
    error: str | None
    crashed: str | None
    scenario: ResultScenario
    verdict: ResultVerdict | None
    host_checks: tuple[ResultHostCheck, ...]
    adds: tuple[ResultAdd, ...]
    add_after_unload: ResultAdd | None
    timings_s: Mapping[str, float]
    versions: Mapping[str, str]
    clock: ResultClock
    start: ResultStart | None
    interrupted: ResultInterruption | None
    failed_stage: str | None
    console_excerpt: str | None
    driver: ResultDriver | None


#: What a pytest test that failed before its run leaves instead of a result.json.
NO_RUN: Mapping[str, Any] = {"schema": RESULT_SCHEMA, "outcome": "none"}


@dataclass(frozen=True)
class PytestOutcome:
    """What the pytest plugin wrote of a test beside its run (`test.json`): the test's node id
    and pytest's outcome, there even when the test failed before any run."""

    nodeid: str | None
    outcome: str | None  # passed, failed, skipped, error


def read_result(path: Path) -> ResultFile:
    """Read and check the result.json at `path`."""
    return parse_result(_read_json(path), str(path))


def read_test_file(path: Path) -> PytestOutcome:
    """Read and check the pytest plugin's test.json at `path`."""
    t = _Obj(_read_json(path), str(path))
    return PytestOutcome(t.opt("nodeid", str), t.opt("outcome", str))


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}",
                         "give a run directory written by 'hotadd run' or the pytest plugin"
                         ) from exc


def parse_result(data: object, where: str = RESULT_FILE) -> ResultFile:
    """A result.json's content (as `json.loads` returns it) as a `ResultFile`."""
    r = _Obj(data, where)
    schema = r.opt("schema", str)
    if schema != RESULT_SCHEMA:
        _refuse_schema(r, schema)
    verdict = r.obj("verdict")
    after = r.obj("add_after_unload")
    start = r.obj("start")
    cut = r.obj("interrupted")
    driver = r.obj("driver")
    return ResultFile(
        schema=schema, outcome=r.opt("outcome", str) or "error",
        exit_code=r.opt("exit_code", int), domain=r.opt("domain", str),
        run_dir=r.opt("run_dir", str), error=r.opt("error", str), crashed=r.opt("crashed", str),
        scenario=_scenario(r.obj("scenario") or _Obj({}, f"{where}: scenario")),
        verdict=_verdict(verdict) if verdict is not None else None,
        host_checks=tuple(ResultHostCheck(
            c.get("check_id", str), c.opt("severity", str) or "", c.get("passed", bool),
            c.get("message", str)) for c in r.objs("host_checks")),
        adds=tuple(_add(a) for a in r.objs("adds")),
        add_after_unload=_add(after) if after is not None else None,
        timings_s=r.typed_values("timings_s", float), versions=r.typed_values("versions", str),
        clock=_clock(r.obj("guest_clock") or _Obj({}, f"{where}: guest_clock")),
        start=ResultStart(start.opt("warm", bool) or False, start.opt("key", str),
                          start.opt("saved", bool) or False, start.opt("note", str) or "")
        if start is not None else None,
        interrupted=ResultInterruption(
            cut.get("signal", str), cut.opt("stage", str),
            tuple(_typed(s, str, f"{where}: interrupted.completed_stages")
                  for s in cut.array("completed_stages"))) if cut is not None else None,
        failed_stage=r.opt("failed_stage", str), console_excerpt=r.opt("console_excerpt", str),
        driver=_driver(driver) if driver is not None else None,
    )


def _refuse_schema(r: _Obj, schema: str | None) -> NoReturn:
    """Another schema (a newer hotadd wrote it) or none (not a hotadd result at all): say so,
    naming the hotadd version that wrote the file when it says."""
    if schema is None:
        raise InputError(f"{r.where} names no schema: it is not a result.json hotadd wrote "
                         f"(every one says \"schema\": \"{RESULT_SCHEMA}\")",
                         "give the result.json of a 'hotadd run' or pytest-plugin run directory")
    versions = r.data.get("versions")
    writer = versions.get("hotadd") if isinstance(versions, dict) else None
    by = f"hotadd {writer}" if isinstance(writer, str) else "another hotadd version"
    raise InputError(f"{r.where} has schema {schema!r}, written by {by}; hotadd "
                     f"{__version__} reads {RESULT_SCHEMA!r}",
                     f"read it with {by}, or run the scenario again with this one")


def _scenario(s: _Obj) -> ResultScenario:
    probe = s.obj("probe")
    return ResultScenario(
        guest=s.opt("guest", str), boot_vcpus=s.opt("boot_vcpus", int), adds=s.opt("adds", int),
        veto_index=probe.opt("veto_index", int) if probe is not None else None,
        add_after_unload=s.opt("add_after_unload", bool) or False)


def _verdict(v: _Obj) -> ResultVerdict:
    counts = v.obj("counts") or _Obj({}, f"{v.where}.counts")
    return ResultVerdict(
        verdict=v.get("verdict", str), records=v.opt("records", int) or 0,
        fails=counts.opt("fail", int) or 0, warns=counts.opt("warn", int) or 0,
        findings=tuple(ResultFinding(
            f.get("rule_id", str), f.opt("severity", str) or "", f.opt("source", str) or "",
            f.opt("statement", str) or "", f.get("message", str),
            tuple(_typed(s, int, f"{f.where}.seqs") for s in f.array("seqs")))
            for f in v.objs("findings")),
        timeline=tuple(ResultEpisode(
            e.get("nt_number", int), e.get("start_t_ns", int), e.opt("end_state", str),
            e.opt("end_t_ns", int)) for e in v.objs("timeline")))


def _driver(d: _Obj) -> ResultDriver:
    return ResultDriver(
        name=d.get("name", str), path=d.opt("path", str) or "", order=d.opt("order", str) or "",
        params=d.typed_values("params", str),
        passed=d.get("passed", bool),
        checks=tuple(ResultDriverCheck(c.get("after", str), c.get("running", bool))
                     for c in d.objs("checks")),
        streams=tuple(ResultStream(
            s.get("writer", str), s.opt("file", str) or "", s.opt("records", int) or 0,
            _verdict(v) if (v := s.obj("verdict")) is not None else None)
            for s in d.objs("streams")),
        faulting_module=d.opt("faulting_module", str))


def _add(a: _Obj) -> ResultAdd:
    q = a.obj("qemu") or _Obj({}, f"{a.where}.qemu")
    return ResultAdd(
        index=a.get("index", int), libvirt_vcpu=a.get("libvirt_vcpu", int),
        method=a.opt("method", str) or "setVcpu",
        socket=q.opt("socket", int), die=q.opt("die", int), core=q.opt("core", int),
        thread=q.opt("thread", int), host_t_wall=a.get("host_t_wall", float),
        call_ms=a.opt("call_ms", float), ost_status=a.opt("ost_status", int),
        ost_ms=a.opt("ost_ms", float), guest_index=a.opt("guest_index", int),
        end_state=a.opt("end_state", str) or "none",
        start_ms_approx=a.opt("start_ms_approx", float),
        end_ms_approx=a.opt("end_ms_approx", float),
        start_to_end_ms=a.opt("start_to_end_ms", float), known_ms=a.opt("known_ms", float),
        known_via=a.opt("known_via", str) or "none", known_gap_ms=a.opt("known_gap_ms", float))


def _clock(c: _Obj) -> ResultClock:
    consistent = c.opt("consistent", bool)
    return ResultClock(
        t0_host_wall=c.opt("t0_host_wall", float), uncertainty_ms=c.opt("uncertainty_ms", float),
        method=c.opt("method", str), samples=c.opt("samples", int),
        round_trip_ms=c.opt("round_trip_ms", float),
        consistent=True if consistent is None else consistent)


def _typed(value: object, kind: type[T], where: str) -> T:
    """`value` if it is a `kind` (an int counts as a float, a bool as neither number)."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is float and number:
        return cast(T, float(cast(float, value)))
    if kind is int and number and isinstance(value, int):
        return cast(T, value)
    if kind not in (int, float) and isinstance(value, kind):
        return value
    raise InputError(f"{where} is {value!r}, not a {kind.__name__}",
                     "give the result.json a run wrote, unedited")


class _Obj:
    """A JSON object of the file, with typed getters that name the key when it is wrong."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, dict):
            raise InputError(f"{where} is not a JSON object",
                             "give the result.json a run wrote, unedited")
        self.data: dict[str, Any] = data
        self.where = where

    def opt(self, key: str, kind: type[T]) -> T | None:
        value = self.data.get(key)
        return None if value is None else _typed(value, kind, f"{self.where}: {key}")

    def get(self, key: str, kind: type[T]) -> T:
        value = self.opt(key, kind)
        if value is None:
            raise InputError(f"{self.where} has no {key}",
                             "give the result.json a run wrote, unedited")
        return value

    def obj(self, key: str) -> _Obj | None:
        """The object at `key`; None when absent, null or empty."""
        value = self.data.get(key)
        return _Obj(value, f"{self.where}: {key}") if value else None

    def array(self, key: str) -> list[Any]:
        value = self.data.get(key) or []
        if not isinstance(value, list):
            raise InputError(f"{self.where}: {key} is not a list",
                             "give the result.json a run wrote, unedited")
        return value

    def objs(self, key: str) -> list[_Obj]:
        return [_Obj(v, f"{self.where}: {key}[{i}]") for i, v in enumerate(self.array(key))]

    def typed_values(self, key: str, kind: type[T]) -> dict[str, T]:
        """The object at `key` (absent: empty), each value a `kind`."""
        found = self.obj(key)
        items = found.data.items() if found is not None else ()
        return {k: _typed(v, kind, f"{self.where}: {key}.{k}") for k, v in items}

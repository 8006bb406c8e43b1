"""A run's result: `RunResult` (what `hotadd run`, the plugin and the matrix return), how an
error or an interrupt becomes one, and result.json written from it. Reading result.json back
is `harness.result_file`'s (the reports' typed view), which names the schema and the file.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import interrupts
from harness.clock import ClockMapping
from harness.developer import DriverReport
from harness.errors import ExitCode, GuestCrashed, GuestUnhealthy, HotaddError, Outcome, exit_code
from harness.guests.base import GuestFacts
from harness.observation import AddOutcome, HostCheck, LoadWindow, Performed
from harness.oracle import Severity, Verdict
from harness.progress import Progress
from harness.result_file import RESULT_FILE, RESULT_SCHEMA
from harness.spec import ScenarioSpec, spec_dict
from harness.warm import StartInfo


def _guest_clock(clock: ClockMapping | None, offset: float | None,
                 method: str) -> dict[str, Any]:
    """result.json's guest_clock: the offset, its uncertainty (None: not mapped) and how it
    was measured ("load": the load round trip alone; "handshake": reads of the probe's clock
    after the load, `harness.clock`)."""
    if clock is None:
        return {"t0_host_wall": offset, "uncertainty_ms": None, "method": method}
    return {**clock.to_dict(), "method": method}


@dataclass(frozen=True)
class Interruption:
    """Which signal ended a run, in which stage, after which stages had finished."""

    signal: str
    stage: str | None  # None: between stages
    completed: tuple[str, ...]

    @classmethod
    def of(cls, exc: KeyboardInterrupt, progress: Progress) -> Interruption:
        stage = progress.interrupted_in
        done = tuple(k for k in progress.timings if k not in (stage, "total"))
        return cls(interrupts.signal_name(exc), stage, done)

    def describe(self) -> str:
        where = f"during {self.stage}" if self.stage else "between stages"
        return (f"interrupted by {self.signal} {where}; completed: "
                f"{', '.join(self.completed) or 'nothing'}")

    def to_dict(self) -> dict[str, Any]:
        return {"signal": self.signal, "stage": self.stage,
                "completed_stages": list(self.completed)}


@dataclass(frozen=True)
class RunResult:
    """A run's result. `spec` is what the run was asked to do, never rewritten; what the run
    learned on the way (adds made, how it started, the clock, the guest's facts) is beside it."""

    spec: ScenarioSpec
    run_dir: Path
    domain: str
    verdict: Verdict | None  # None when the run broke before records existed
    host_checks: tuple[HostCheck, ...]
    adds: tuple[AddOutcome, ...]
    timings: dict[str, float]
    versions: dict[str, str]
    error: str | None = None  # what stopped the run: a harness error, or the guest's crash
    crashed: str | None = None  # the crash (bugcheck) if the guest died under test (a verdict)
    clock_offset: float | None = None  # host Unix time of the probe's t_ns == 0 (None: unknown)
    after_unload: AddOutcome | None = None  # the add made after the probe was unloaded
    guest: GuestFacts | None = None  # what the guest said about itself before the load
    interrupted: Interruption | None = None  # a Ctrl-C/SIGTERM ended the run early
    failed_stage: str | None = None  # the stage the error ended, e.g. "add 2, waiting for ..."
    console_excerpt: str | None = None  # what the console said when the guest crashed/wedged
    start: StartInfo | None = None  # booted or restored (None: the run broke before)
    clock: ClockMapping | None = None  # clock_offset with its measured uncertainty
    clock_method: str = "load"  # "handshake": round trips read the probe's clock after load
    driver: DriverReport | None = None  # the developer's driver, when one ran beside the probe
    performed: Performed | None = None  # the steps a test took, where they left `spec`'s plan
    load_window: LoadWindow | None = None  # --load-during-adds: where the adds landed

    @property
    def passed(self) -> bool:
        return (self.error is None and self.verdict is not None and self.verdict.passed
                and all(c.passed or c.severity is Severity.WARN for c in self.host_checks)
                and (self.driver is None or self.driver.passed))

    @property
    def outcome(self) -> Outcome:
        if self.interrupted is not None:
            return Outcome.INTERRUPTED
        if self.passed:
            return Outcome.PASS
        if self.error is None or self.crashed is not None:
            return Outcome.FAIL
        return Outcome.ERROR

    @property
    def exit_code(self) -> ExitCode:
        return exit_code(self.outcome)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": RESULT_SCHEMA, "outcome": self.outcome.value,
            "exit_code": int(self.exit_code),
            "domain": self.domain, "run_dir": str(self.run_dir), "error": self.error,
            "crashed": self.crashed,
            "scenario": spec_dict(self.spec) | (
                self.performed.scenario_fields() if self.performed else {}),
            "verdict": self.verdict.to_dict() if self.verdict else None,
            "host_checks": [c.to_dict() for c in self.host_checks],
            "adds": [a.to_dict() for a in self.adds],
            "add_after_unload": self.after_unload.to_dict() if self.after_unload else None,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "versions": self.versions,
            "guest_clock": _guest_clock(self.clock, self.clock_offset, self.clock_method),
            "start": self.start.to_dict() if self.start else None,
            "guest": dataclasses.asdict(self.guest) if self.guest else None,
            "interrupted": self.interrupted.to_dict() if self.interrupted else None,
            "failed_stage": self.failed_stage, "console_excerpt": self.console_excerpt,
            "driver": self.driver.to_dict() if self.driver else None,
            "load_window": self.load_window.to_dict() if self.load_window else None,
        }


def failure_fields(exc: HotaddError | None) -> dict[str, Any]:
    """RunResult's error fields for `exc` (a crash is a verdict failure, anything else exit 2)."""
    if exc is None:
        return {}
    if isinstance(exc, GuestCrashed) and not exc.under_test:
        exc.add_note("the guest crashed before the probe was loaded: not a verdict")
    return {
        "error": f"[{exc.stage}] {exc.message}" if exc.stage else exc.message,
        "crashed": _crash_under_test(exc),
        "failed_stage": exc.stage,
        "console_excerpt": exc.excerpt if isinstance(exc, GuestUnhealthy) else None,
    }


def write_result(result: RunResult) -> Path:
    path = result.run_dir / RESULT_FILE
    path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return path


def _crash_under_test(exc: HotaddError) -> str | None:
    """The crash to report as a verdict, if `exc` is a crash of the guest under test."""
    return str(exc.problem) if isinstance(exc, GuestCrashed) and exc.under_test else None


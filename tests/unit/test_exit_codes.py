"""Every way a command ends, through the real CLI, maps to one exit code (harness.errors).

0: pass. 1: the guest under test misbehaved (a failing verdict, or a crash once the probe began
to load). 2: no verdict (bad input, the lab broke, an interrupt, a bug in hotadd). The guest
crash paths of `hotadd run` are in tests/vm/test_exit_codes_vm.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from harness import cli
from harness.commands import check as check_command
from harness.errors import (
    ExitCode,
    GuestCrashed,
    InputError,
    Outcome,
    TransportError,
    exit_code,
    outcome_of,
)
from tests.support.processes import run_hotadd

TRACES = Path(__file__).resolve().parents[1] / "data" / "traces"


@pytest.mark.parametrize(("args", "code"), [
    (["check", "--profile", "windows", str(TRACES / "win_hotadd_veto.jsonl")], 0),
    (["check", str(TRACES / "win_bad_complete_after_veto.jsonl")], 1),
    (["check", str(TRACES / "malformed_truncated.jsonl")], 2),
    (["check", "/nonexistent/records.jsonl"], 2),
    (["run", "--adds", "many"], 2),  # argparse's usage error
    (["run", "--boot-vcpus", "9"], 2),  # an impossible spec, refused before any VM
])
def test_subprocess_paths(args: list[str], code: int) -> None:
    proc = run_hotadd(*args, timeout=60)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def _failing_check(exc: BaseException) -> object:
    def run_check(_args: argparse.Namespace) -> int:
        raise exc

    return run_check


@pytest.mark.parametrize(("exc", "code", "says"), [
    (InputError("bad spec", "fix it"), ExitCode.HARNESS_ERROR, "hotadd: error: bad spec"),
    (TransportError("the guest went away"), ExitCode.HARNESS_ERROR, "the guest went away"),
    (GuestCrashed("bugcheck 0x0000009C"), ExitCode.HARNESS_ERROR, "bugcheck 0x0000009C"),
    (GuestCrashed("bugcheck 0x0000009C", under_test=True), ExitCode.VERDICT_FAIL,
     "bugcheck 0x0000009C"),
    (KeyboardInterrupt("SIGTERM"), ExitCode.HARNESS_ERROR, "interrupted (SIGTERM)"),
    (RuntimeError("a bug"), ExitCode.HARNESS_ERROR, "internal error (a bug in hotadd"),
])
def test_in_process_paths(exc: BaseException, code: ExitCode, says: str,
                          monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    """Errors raised by a real command (its function swapped for one that raises) end the
    real `cli.main` with the mapped code and a message."""
    monkeypatch.setattr(check_command, "run_check", _failing_check(exc))
    assert cli.main(["check", str(TRACES / "win_hotadd_veto.jsonl")]) == code
    assert says in capsys.readouterr().err


def test_every_outcome_has_one_code() -> None:
    assert {o: exit_code(o) for o in Outcome} == {
        Outcome.PASS: 0, Outcome.FAIL: 1, Outcome.ERROR: 2, Outcome.INTERRUPTED: 2}
    assert outcome_of(GuestCrashed("x", under_test=True)) is Outcome.FAIL
    assert outcome_of(GuestCrashed("x")) is Outcome.ERROR
    assert outcome_of(KeyboardInterrupt()) is Outcome.INTERRUPTED

"""A guest crash during `hotadd run`, through the real CLI: once the probe began to load it is
a verdict (exit 1, outcome fail, the crash in result.json); before, it is the lab's (exit 2).

The crash is real (the reference guest's kernel panics through sysrq and pvpanic reports it);
the test only chooses the moment, by wrapping one step of the scenario.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import cli
from harness.attempt import Attempt
from harness.host.events import PanicEvent
from harness.pool import Guest

PANIC = "(sleep 0.2; echo c > /proc/sysrq-trigger) >/dev/null 2>&1 &"


def _panic(guest: Guest) -> None:
    """Panic the guest's kernel and wait until the host has seen it."""
    assert guest.session is not None
    guest.session.transport.run(PANIC).check()
    assert guest.machine.events.log.wait_for(lambda e: isinstance(e, PanicEvent), 60)


def _run(run_dir: Path) -> tuple[int, dict[str, object]]:
    code = cli.main(["run", "--quiet", "--adds", "1", "--run-dir", str(run_dir)])
    return code, json.loads((run_dir / "result.json").read_text())


def test_crash_after_the_probe_loaded_is_a_verdict(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    load = Attempt.load

    def load_then_panic(self: Attempt) -> None:
        load(self)
        _panic(self.guest)

    monkeypatch.setattr(Attempt, "load", load_then_panic)
    code, result = _run(tmp_path / "run")
    assert (code, result["outcome"], result["exit_code"]) == (1, "fail", 1), result
    assert "guest panic" in str(result["crashed"])


def test_crash_before_the_probe_is_the_labs(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    connect = Guest.connect

    def connect_then_panic(self: Guest, progress: object) -> object:
        session = connect(self, progress)  # type: ignore[arg-type]
        _panic(self)
        return session

    monkeypatch.setattr(Guest, "connect", connect_then_panic)
    code, result = _run(tmp_path / "run")
    assert (code, result["outcome"], result["exit_code"]) == (2, "error", 2), result
    assert result["crashed"] is None and "guest panic" in str(result["error"])
    assert "before the probe was loaded: not a verdict" in str(result["error"])
    assert "sysrq triggered crash" in str(result["console_excerpt"])

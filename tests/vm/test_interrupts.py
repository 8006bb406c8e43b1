"""Ctrl-C and SIGTERM against a real `hotadd run` on the reference guest: the signal is sent
when the progress output shows a given stage (no sleeps), and the run must end with exit 2, a
result.json saying `interrupted` and what was done, a message that tells the truth, and no
QEMU (`cli_uri` asserts it) or scratch dir left."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from harness import paths

pytestmark = pytest.mark.vm

DEADLINE_S = 180  # for the whole run; a hang fails the test instead of stalling the suite


def start_run(cli_uri: str, run_dir: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "harness", "run", "--libvirt-uri", cli_uri, "--run-dir",
         str(run_dir), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_line(proc: subprocess.Popen[str], marker: str, seen: list[str]) -> None:
    """Read progress lines until one contains `marker` (the process is killed by the
    test's timeout otherwise: communicate() below bounds the rest)."""
    assert proc.stderr is not None
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            return
    pytest.fail(f"the run ended before {marker!r} appeared:\n{''.join(seen)}")


def finish(proc: subprocess.Popen[str], seen: list[str]) -> str:
    try:
        _, rest = proc.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("hotadd did not end after the signal:\n" + "".join(seen))
    return "".join(seen) + rest


def result_of(run_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / "result.json").read_text())
    return data


def assert_torn_down(run_dir: Path, err: str) -> None:
    name = ET.parse(run_dir / "domain.xml").findtext("name")
    assert name and name.startswith("hotadd-reference-")
    assert not (paths.scratch_dir() / name).exists(), err
    assert "the run was torn down" in err and "left behind" not in err


@pytest.mark.parametrize(("stage", "sig"), [
    ("boot", signal.SIGTERM),  # --cold: a boot (a warm run restores instead)
    ("restore", signal.SIGTERM),  # the default warm start (harness.warm)
    ("ready", signal.SIGINT),
    ("add 1", signal.SIGINT),
    ("collect", signal.SIGTERM),
])
def test_signal_at_a_stage_leaves_an_interrupted_result(cli_uri: str, tmp_path: Path,
                                                        stage: str, sig: signal.Signals) -> None:
    run_dir = tmp_path / "run"
    proc = start_run(cli_uri, run_dir, *(["--cold"] if stage == "boot" else []))
    seen: list[str] = []
    wait_for_line(proc, f"] {stage}: ", seen)
    proc.send_signal(sig)
    err = finish(proc, seen)
    assert proc.returncode == 2, err
    assert f"hotadd: interrupted ({sig.name}); the run was torn down" in err
    assert "()" not in err and "Traceback" not in err
    assert_torn_down(run_dir, err)
    result = result_of(run_dir)
    assert result["outcome"] == "interrupted" and result["exit_code"] == 2
    cut = result["interrupted"]
    assert cut["signal"] == sig.name
    # the signal names the stage it cut short, or (when that stage ended before the signal
    # landed, or a VM start held it) the stage is among those completed
    assert cut["stage"] == stage or stage in cut["completed_stages"], cut
    assert "prepare" in cut["completed_stages"] and "total" in result["timings_s"]
    assert f"interrupted by {sig.name}" in result["error"]
    if stage == "collect":
        assert [a["end_state"] for a in result["adds"]] == ["complete", "complete"]


def test_second_ctrl_c_during_teardown_still_tears_down(cli_uri: str, tmp_path: Path) -> None:
    """The second Ctrl-C, sent once the teardown has begun, waits for it instead of leaving
    the scratch dir behind while the message says "torn down"."""
    run_dir = tmp_path / "run"
    proc = start_run(cli_uri, run_dir)
    seen: list[str] = []
    wait_for_line(proc, "] add 1: ", seen)
    proc.send_signal(signal.SIGINT)
    wait_for_line(proc, "] teardown: ", seen)
    proc.send_signal(signal.SIGINT)
    err = finish(proc, seen)
    assert proc.returncode == 2, err
    assert_torn_down(run_dir, err)
    assert result_of(run_dir)["outcome"] == "interrupted"

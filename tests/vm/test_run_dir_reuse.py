"""A run reusing the directory of an earlier run: the earlier run's artifacts are gone before
this one starts (a PASS report never links an old screenshot.png), and the progress says which
it removed. The real CLI, the reference guest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import rundir
from tests.support.processes import run_hotadd

pytestmark = pytest.mark.vm


def test_reused_run_dir_holds_only_this_runs_artifacts(cli_uri: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    rundir.claim(run_dir)  # as an earlier run left it, after a failure
    (run_dir / "screenshot.png").write_bytes(b"\x89PNG stale")
    (run_dir / "result.json").write_text('{"outcome": "fail"}\n')
    proc = run_hotadd("run", "--libvirt-uri", cli_uri, "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "removed the earlier run's result.json, screenshot.png" in proc.stderr
    assert not (run_dir / "screenshot.png").exists()
    assert json.loads((run_dir / "result.json").read_text())["outcome"] == "pass"
    assert "screenshot.png" not in (run_dir / "report.html").read_text()

"""A run owns its directory: an earlier run's artifacts are cleared (and named), anything
else is left alone, and a directory hotadd did not make is never written into."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import rundir
from harness.errors import InputError


def test_new_directory_is_created_and_marked(tmp_path: Path) -> None:
    claim = rundir.claim(tmp_path / "a" / "run")
    assert claim.cleared == claim.kept == () and claim.describe() is None
    assert (tmp_path / "a" / "run" / rundir.MARKER).is_file()


def test_reused_run_directory_loses_the_stale_artifacts_and_says_which(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    rundir.claim(run_dir)
    for name in ("result.json", "screenshot.png", "serial.log"):
        (run_dir / name).write_text("old")
    (run_dir / "notes.txt").write_text("mine")
    claim = rundir.claim(run_dir)
    assert claim.cleared == ("result.json", "screenshot.png", "serial.log")
    assert claim.kept == ("notes.txt",)
    assert "removed the earlier run's result.json, screenshot.png, serial.log" in str(
        claim.describe())
    assert sorted(p.name for p in run_dir.iterdir()) == [rundir.MARKER, "notes.txt"]


def test_foreign_non_empty_directory_is_refused_untouched(tmp_path: Path) -> None:
    (tmp_path / "screenshot.png").write_text("someone else's")
    with pytest.raises(InputError, match="no hotadd run made it") as err:
        rundir.claim(tmp_path)
    assert err.value.fix and "new or empty directory" in err.value.fix
    assert [p.name for p in tmp_path.iterdir()] == ["screenshot.png"]

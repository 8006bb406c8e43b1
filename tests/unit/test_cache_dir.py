"""An unusable cache directory (read-only, or a file) breaks only the commands that need it,
with exit 2 naming the directory and the fix; `--version`, `--help` and `hotadd check` work.

The read-only case is a real read-only bind mount in a private mount namespace (`unshare -m`,
needs root), since root ignores file modes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.paths import REPO_ROOT

TRACE = REPO_ROOT / "tests" / "data" / "traces" / "linux_hotadd.jsonl"


def hotadd(cache: Path, *args: str, read_only: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LIBVIRT_LOG_OUTPUTS", "HOTADD_LIBVIRT_URI")}
    env |= {"HOTADD_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO_ROOT)}
    argv = [sys.executable, "-m", "harness", *args]
    if read_only:
        script = 'mount --bind -o ro "$0" "$0" && exec "$@"'
        argv = ["unshare", "-m", "sh", "-c", script, str(cache), *argv]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def read_only_mounts_work(tmp: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = tmp / "probe"
    probe.mkdir()
    proc = subprocess.run(["unshare", "-m", "sh", "-c",
                           'mount --bind -o ro "$0" "$0" && ! touch "$0/x" 2>/dev/null',
                           str(probe)], capture_output=True, check=False)
    return proc.returncode == 0


def assert_commands_that_need_no_cache_work(cache: Path, read_only: bool) -> None:
    for args in (("--version",), ("run", "--help"), ("check", "--profile", "linux", str(TRACE))):
        proc = hotadd(cache, *args, read_only=read_only)
        assert proc.returncode == 0, (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def assert_commands_that_need_it_name_it(cache: Path, run_dir: Path, read_only: bool) -> None:
    for args in (("run", "--quiet", "--run-dir", str(run_dir)), ("sweep",),
                 ("guest", "build")):
        proc = hotadd(cache, *args, read_only=read_only)
        assert proc.returncode == 2, (args, proc.stderr)
        assert f"the hotadd cache directory {cache}" in proc.stderr, proc.stderr
        assert "HOTADD_CACHE_DIR" in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory: the default libvirt root goes under the cache, and its length is
    limited (a UNIX socket path), which must not be what these tests run into."""
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="hotadd-"))
    yield path
    shutil.rmtree(path)


def test_read_only_cache(tmp_path: Path, short_tmp: Path) -> None:
    if not read_only_mounts_work(tmp_path):
        pytest.skip("needs root and unshare -m for a real read-only mount")
    cache = short_tmp / "cache"
    cache.mkdir()
    (cache / "libvirt.log").write_text("")  # the file libvirt would have to append to
    assert_commands_that_need_no_cache_work(cache, read_only=True)
    assert_commands_that_need_it_name_it(cache, tmp_path / "run", read_only=True)


def test_cache_path_that_is_a_file(tmp_path: Path, short_tmp: Path) -> None:
    cache = short_tmp / "cache"
    cache.write_text("not a directory\n")
    assert_commands_that_need_no_cache_work(cache, read_only=False)
    assert_commands_that_need_it_name_it(cache, tmp_path / "run", read_only=False)
    doctor = hotadd(cache, "doctor")  # reports the cache among its checks, and goes on
    assert doctor.returncode == 2 and "Traceback" not in doctor.stderr
    assert "NO  cache directory" in doctor.stdout and "HOTADD_CACHE_DIR" in doctor.stdout
    assert cache.read_text() == "not a directory\n"


def test_version_does_not_create_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert hotadd(cache, "--version").returncode == 0
    assert hotadd(cache, "check", "--profile", "linux", str(TRACE)).returncode == 0
    assert not cache.exists()

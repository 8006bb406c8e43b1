"""A run killed (-9) on a non-default libvirt root leaves its QEMU running: plain
`hotadd sweep` says which roots it did not look at, and `hotadd sweep --all` clears them.
The real CLI, the reference guest, a private cache (its built guest shared by a symlink)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import paths
from harness.paths import REPO_ROOT
from tests.support.processes import qemu_pids_mentioning

pytestmark = pytest.mark.vm


@pytest.fixture
def private() -> Iterator[tuple[Path, dict[str, str]]]:
    """A short base dir (embedded roots go under it) and the environment of a private cache."""
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="hotadd-"))
    cache = base / "c"
    cache.mkdir()
    (cache / "guests").symlink_to(paths.guests_dir())
    env = {k: v for k, v in os.environ.items()
           if k not in ("LIBVIRT_LOG_OUTPUTS", "HOTADD_LIBVIRT_URI")}
    env |= {"HOTADD_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO_ROOT)}
    try:
        yield base, env
    finally:
        for root in (base / "r", cache / "libvirt"):  # whatever the test did, no QEMU stays
            if qemu_pids_mentioning(str(root)):
                subprocess.run([sys.executable, "-m", "harness", "sweep", "--libvirt-uri",
                                f"qemu:///embed?root={root}"], env=env, check=False,
                               capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def hotadd(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", *args], env=env, text=True,
                          capture_output=True, timeout=300, check=False)


def test_killed_run_on_another_root_is_found_and_swept(
        private: tuple[Path, dict[str, str]]) -> None:
    base, env = private
    root = base / "r"
    uri = f"qemu:///embed?root={root}"
    run = subprocess.Popen([sys.executable, "-m", "harness", "run", "--libvirt-uri", uri,
                            "--run-dir", str(base / "run")], env=env, text=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert run.stderr is not None
    for line in run.stderr:
        if "] ready: " in line:
            break
    else:
        pytest.fail("the run ended before the guest was booting")
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=60)
    assert qemu_pids_mentioning(str(root)), "a killed run leaves its QEMU: the fault to sweep"

    plain = hotadd(env, "sweep")
    assert plain.returncode == 0, plain.stderr
    assert "looked only at" in plain.stdout and uri in plain.stdout
    assert "'hotadd sweep --all' sweeps them too" in plain.stdout
    assert qemu_pids_mentioning(str(root))  # plain sweep said so, and left it alone

    swept = hotadd(env, "sweep", "--all")
    assert swept.returncode == 0, swept.stdout + swept.stderr
    assert f"{uri}: sweep: removed leftovers of crashed runs: domains hotadd-reference-" in (
        swept.stdout)
    assert not qemu_pids_mentioning(str(root))

"""`qemu:///system`: the same run through a real libvirtd (started here when none runs), and
the clear error when QEMU, running as libvirt's unprivileged user, could not reach the guest."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm
SOCKET = Path("/run/libvirt/libvirt-sock")


@pytest.fixture(scope="module")
def system_libvirtd() -> Iterator[None]:
    """A libvirtd for qemu:///system: the machine's own if it runs, else one started (and
    stopped) here. Needs root and Debian's libvirt-daemon-system, which setup.sh installs."""
    if SOCKET.exists():
        yield
        return
    if os.geteuid() != 0:
        pytest.skip("qemu:///system needs a running libvirtd, and starting one needs root")
    daemons = [subprocess.Popen([name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for name in ("virtlogd", "libvirtd")]
    deadline = time.monotonic() + 30
    while not SOCKET.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert SOCKET.exists(), "libvirtd did not create its socket in 30 s"
    try:
        yield
    finally:
        for proc in reversed(daemons):
            proc.terminate()
            proc.wait(timeout=30)


def test_default_scenario_through_system_libvirtd(system_libvirtd: None, tmp_path: Path) -> None:
    cache = Path(tempfile.mkdtemp(prefix="hotadd-sys-", dir="/var/tmp"))
    cache.chmod(0o755)
    try:
        result = _run_with_env({"HOTADD_CACHE_DIR": str(cache)}, "--libvirt-uri", "qemu:///system",
                               "--run-dir", str(tmp_path / "run"))
        assert result.returncode == 0, result.stdout + result.stderr
        data = json.loads((tmp_path / "run" / "result.json").read_text())
        assert data["outcome"] == "pass"
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def test_unreachable_cache_under_system_libvirtd_is_a_clear_error(system_libvirtd: None,
                                                                  tmp_path: Path) -> None:
    private = tmp_path / "private-cache"
    private.mkdir(mode=0o700)
    result = _run_with_env({"HOTADD_CACHE_DIR": str(private)}, "--libvirt-uri",
                           "qemu:///system", "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "other users cannot search" in result.stderr + result.stdout
    assert "HOTADD_CACHE_DIR" in result.stderr + result.stdout


def _run_with_env(extra: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`hotadd run` with extra environment (the cache location decides what QEMU can read)."""
    return subprocess.run([sys.executable, "-m", "harness", "run", "--quiet", *args],
                          env=os.environ | extra, capture_output=True, text=True, timeout=600,
                          check=False)

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

from tests.support import windows_media

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


windows_iso = windows_media.windows_iso
virtio_iso = windows_media.virtio_iso


def test_image_build_through_system_libvirtd(system_libvirtd: None, windows_iso: Path,
                                             virtio_iso: Path) -> None:
    """`hotadd image build` under qemu:///system: QEMU, running as libvirt's user, opens the
    Windows ISO, the provisioning ISO (mode 0600, handed over by libvirt), the NVRAM and the
    disk in the build's work directory. The stand-in ISO boots nothing, so the build must get
    as far as waiting for Setup to write the disk, and stop there. Through the real CLI in its
    own process: this process already holds an embedded libvirt driver, and libvirt lets a
    process that has one open no other QEMU driver URI."""
    shared = Path(tempfile.mkdtemp(prefix="hotadd-sysimg-", dir="/var/tmp"))
    shared.chmod(0o755)
    try:
        iso = shared / "ws2022.iso"
        shutil.copyfile(windows_iso, iso)
        proc = subprocess.run(
            [sys.executable, "-m", "harness", "image", "build", "--iso", str(iso),
             "--virtio-iso", str(virtio_iso), "--edition", "2",
             "--output", str(shared / "golden.qcow2"), "--firmware", "uefi",
             "--memory-mib", "512", "--force-tcg", "--libvirt-uri", "qemu:///system",
             "--stall-timeout", "5", "--screenshot-every", "2"],
            env=os.environ | {"HOTADD_WINDOWS_PASSWORD": "Build-Pa55word!"},
            capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "stopped at stage 'boot installer'" in proc.stderr, proc.stderr
        assert "wrote nothing to the disk" in proc.stderr
        assert "Build-Pa55word!" not in proc.stdout + proc.stderr
        assert sorted(p.name for p in shared.iterdir()) == ["golden.qcow2.build", "ws2022.iso"]
    finally:
        shutil.rmtree(shared, ignore_errors=True)

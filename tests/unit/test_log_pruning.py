"""Logs under the cache stay bounded: every sweep (so every run) keeps the newest
KEEP_QEMU_LOGS per-domain QEMU logs of an embedded root and rotates libvirt.log past
LIBVIRT_LOG_MAX. The real `hotadd sweep` on a real embedded libvirt root (no VM is started)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.host.sweep import KEEP_QEMU_LOGS, LIBVIRT_LOG_MAX
from harness.paths import REPO_ROOT


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="hotadd-"))  # an embedded root: short
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_sweep_prunes_old_qemu_logs_and_rotates_libvirt_log(short_tmp: Path) -> None:
    cache, root = short_tmp / "c", short_tmp / "r"
    logs = root / "log" / "qemu"
    logs.mkdir(parents=True)
    for i in range(KEEP_QEMU_LOGS + 5):
        log = logs / f"hotadd-reference-{i:08x}.log"
        log.write_text(f"run {i}\n")
        os.utime(log, (1_700_000_000 + i, 1_700_000_000 + i))  # i = age order, newest last
    cache.mkdir()
    (cache / "libvirt.log").write_bytes(b"x" * (LIBVIRT_LOG_MAX + 1))
    env = {k: v for k, v in os.environ.items() if k != "LIBVIRT_LOG_OUTPUTS"}
    env |= {"HOTADD_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-m", "harness", "sweep", "--libvirt-uri",
                           f"qemu:///embed?root={root}"], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "pruned 6 old log(s)" in proc.stdout  # 5 QEMU logs and libvirt.log
    kept = sorted(p.name for p in logs.glob("*.log"))
    assert kept == [f"hotadd-reference-{i:08x}.log" for i in range(5, KEEP_QEMU_LOGS + 5)]
    assert (cache / "libvirt.log.1").stat().st_size > LIBVIRT_LOG_MAX
    assert not (cache / "libvirt.log").exists() or (
        (cache / "libvirt.log").stat().st_size < LIBVIRT_LOG_MAX)

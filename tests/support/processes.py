"""QEMU process checks and the real CLI as a subprocess, for tests in every folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.host.roots import qemu_pids_mentioning

__all__ = ["qemu_pids_mentioning", "run_hotadd", "short_root"]


@contextmanager
def short_root() -> Iterator[Path]:
    """A fresh embedded-libvirt root with a short path (QEMU's sockets live under it)."""
    root = Path(tempfile.mkdtemp(prefix="hotadd-lv-", dir="/tmp"))
    try:
        yield root
        assert not qemu_pids_mentioning(str(root)), f"hotadd left QEMU running under {root}"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_hotadd(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the real CLI (`python -m harness ...`) and capture its output."""
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)

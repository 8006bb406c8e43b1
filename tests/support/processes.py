"""QEMU process checks and the real CLI as a subprocess, for tests in every folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from harness.host.roots import qemu_pids_mentioning

__all__ = ["qemu_pids_mentioning", "run_hotadd", "short_root", "stop"]


@contextmanager
def short_root() -> Iterator[Path]:
    """A fresh embedded-libvirt root with a short path (QEMU's sockets live under it)."""
    root = Path(tempfile.mkdtemp(prefix="hotadd-lv-", dir="/tmp"))
    try:
        yield root
        assert not qemu_pids_mentioning(str(root)), f"hotadd left QEMU running under {root}"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_hotadd(*args: str, timeout: float = 600,
               env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real CLI (`python -m harness ...`) and capture its output; `env` is added to
    this process's environment."""
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, timeout=timeout, check=False,
                          env=None if env is None else {**os.environ, **env})


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End a process a test started: SIGTERM, then SIGKILL if it is still there in 30 s."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()

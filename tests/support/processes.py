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

__all__ = ["LineProcess", "qemu_pids_mentioning", "run_hotadd", "short_root", "stop"]


@contextmanager
def short_root() -> Iterator[Path]:
    """A fresh embedded-libvirt root with a short path (QEMU's sockets live under it)."""
    root = Path(tempfile.mkdtemp(prefix="hotadd-lv-", dir="/tmp"))
    try:
        yield root
        assert not qemu_pids_mentioning(str(root)), f"hotadd left QEMU running under {root}"
    finally:
        shutil.rmtree(root, ignore_errors=True)


REPO = Path(__file__).resolve().parents[2]


class LineProcess:
    """A test's helper module run as a process (`python -m MODULE ARGS`), driven by lines: it
    answers on stdout, and goes on when a line arrives on its stdin."""

    def __init__(self, module: str, args: list[str],
                 env: Mapping[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, cwd=REPO,
            env=os.environ | {"PYTHONPATH": str(REPO)} | dict(env or {}))

    def line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def go(self) -> str:
        """Tell it to go on; its next line."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self.line()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


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

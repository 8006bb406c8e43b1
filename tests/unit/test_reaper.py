"""harness.host.reaper: a daemonized descendant (as libvirt daemonizes QEMU) becomes this
process's child and is reaped the moment it exits, not left a zombie for init."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from harness.host import reaper


def _orphan() -> int:
    """A process whose parent has exited (sh backgrounds sleep and exits): a double fork."""
    out = subprocess.run(["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], check=True,
                         capture_output=True, text=True).stdout
    return int(out)


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rfind(")") + 2:].split()[1])


def test_an_orphaned_descendant_is_our_child_and_is_reaped_when_killed() -> None:
    assert reaper.become_subreaper()
    pid = _orphan()
    assert _parent(pid) == os.getpid()
    reaped = reaper.watch(pid)
    assert reaped is not None
    os.kill(pid, signal.SIGKILL)
    assert reaped.wait(30)
    assert not Path(f"/proc/{pid}").exists()  # gone, not a zombie


def test_a_process_that_is_not_our_child_is_left_to_its_parent() -> None:
    assert reaper.watch(1) is None

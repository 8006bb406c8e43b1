"""harness.host.reaper: a daemonized QEMU (libvirt daemonizes it) becomes the subreaper's child
and is reaped the moment it exits, not left a zombie for init; no other child's exit status is
taken from the code that waits for it. The subreaper runs in a child process: making the test
runner one would adopt every daemon other tests start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from harness.host import reaper

_SUBREAPER = textwrap.dedent("""
    import os, signal, subprocess, sys
    from pathlib import Path
    from harness.host import reaper
    from harness.host.procfs import proc_stat

    def orphan(exe):  # setsid, then sh backgrounds it and exits: as libvirt daemonizes QEMU
        return int(subprocess.run(["setsid", "sh", "-c", f"{exe} 60 >/dev/null 2>&1 & echo $!"],
                                  check=True, capture_output=True, text=True).stdout)

    assert reaper.become_subreaper()
    qemu = orphan(sys.argv[1])  # named like QEMU
    print("ADOPTED", proc_stat(qemu).parent == os.getpid())
    reaped = reaper.watch(qemu)
    os.kill(qemu, signal.SIGKILL)
    print("REAPED", reaped is not None and reaped.wait(30))
    print("GONE", not Path(f"/proc/{qemu}").exists())
    print("STATUS", subprocess.run(["sh", "-c", "exit 3"]).returncode)  # not taken from it
""")


def test_a_daemonized_qemu_is_adopted_and_reaped_and_other_statuses_are_left(
        tmp_path: Path) -> None:
    qemu = tmp_path / "qemu-system-x86_64"
    qemu.symlink_to("/bin/sleep")  # a process's comm is the name it was executed by
    tree = str(Path(reaper.__file__).parents[2])  # this checkout's harness, in the child too
    done = subprocess.run([sys.executable, "-c", _SUBREAPER, str(qemu)], capture_output=True,
                          text=True, check=False, timeout=60,
                          env={**os.environ, "PYTHONPATH": tree})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ADOPTED", "True", "REAPED", "True", "GONE", "True",
                                   "STATUS", "3"]


def test_a_process_that_is_not_our_child_is_left_to_its_parent() -> None:
    assert reaper.watch(1) is None


def test_without_a_subreaper_an_orphan_is_not_ours() -> None:
    pid = int(subprocess.run(["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], check=True,
                             capture_output=True, text=True).stdout)
    try:
        assert reaper.watch(pid) is None  # the test runner never became a subreaper
    finally:
        os.kill(pid, signal.SIGKILL)

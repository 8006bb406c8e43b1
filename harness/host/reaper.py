"""This process as the reaper of the QEMU processes it starts, so an exited QEMU is gone at once.

libvirt daemonizes QEMU (a double fork), so QEMU's parent is init, or the nearest "child
subreaper" above it. An exited QEMU stays a zombie until that parent reaps it, and kill(pid, 0)
still finds a zombie: virDomainDestroy, and libvirt's cleanup after a QEMU that died, poll for
the process every 200 ms until it is gone (virProcessKillPainfullyDelay, src/util/virprocess.c,
libvirt 9.0), so they last as long as the zombie does. That is 1.1-1.5 s on our CI machine,
whose init reaps slowly, and forever in a container whose init never reaps.

`become_subreaper` makes this process the subreaper of its orphaned descendants
(PR_SET_CHILD_SUBREAPER, prctl(2): https://man7.org/linux/man-pages/man2/prctl.2.html), so
every QEMU libvirt starts for it (a domain's, and the short-lived ones of libvirt's capability
probe) is its child, and one daemon thread reaps each the moment it exits (waitid(2)). Only an
adopted QEMU is reaped there (`_adopted_qemu`): every other child has a parent in this process
that waits for it (subprocess, or libvirt waiting for its own fork), and taking its exit status
would break that wait. `watch(pid)` gives the Event set once that QEMU is reaped.

Only the `hotadd` command-line process becomes a subreaper (`harness.cli.run`): it owns every
QEMU it starts. A library caller (pytest, lab automation, a test calling `cli.main`) is left as
it is: every daemon its other code starts (a fixture's sshd or libvirtd) would become its
child. Without it, `watch` finds QEMU is not our child and libvirt waits for init as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import time
from pathlib import Path

from harness.host.procfs import ProcStat, proc_stat

_PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>, Linux 3.4
_QEMU_COMM = "qemu-system"  # proc(5) comm: the executable's name, cut to 15 characters
_IDLE_S = 0.05  # how long the reaper waits while no QEMU child is waiting to be reaped
_lock = threading.Lock()
_subreaper = False
_watched: dict[int, threading.Event] = {}


def become_subreaper() -> bool:
    """Make this process the subreaper of its descendants and start reaping its QEMU children
    (idempotent); False where the kernel refuses, and then QEMU's reaping stays init's."""
    global _subreaper
    with _lock:
        if not _subreaper:
            libc = ctypes.CDLL(None, use_errno=True)
            _subreaper = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
            if _subreaper:
                threading.Thread(target=_reap_qemu, name="reaper", daemon=True).start()
        return _subreaper


def watch(pid: int) -> threading.Event | None:
    """The Event set once QEMU `pid` is reaped here; None if it is not this process's child
    (no subreaper, or libvirtd's QEMU): its parent reaps it."""
    reaped = threading.Event()
    with _lock:
        if not _subreaper or _stat(pid) is None:
            return None
        _watched[pid] = reaped
    if _stat(pid) is None:  # reaped between the two looks
        with _lock:
            _watched.pop(pid, None)
        reaped.set()
    return reaped


def _stat(pid: int) -> ProcStat | None:
    """`pid` as /proc shows it, if it is this process's child (a zombie still is)."""
    child = proc_stat(pid)
    return child if child is not None and child.parent == os.getpid() else None


def _adopted_qemu(pid: int, child: ProcStat) -> bool:
    """Whether child `pid` is a QEMU this process adopted, not one it forked and waits for.
    libvirt daemonizes a domain's QEMU (fork, setsid, fork), and QEMU's own -daemonize (used by
    libvirt's capability probe) does the same, so an adopted QEMU is in a session of its own
    that it does not lead. A fork of this process that exec'd QEMU (the probe's first QEMU,
    which libvirt waits for) is in our session, or leads its own (setsid), and is left."""
    return (child.comm.startswith(_QEMU_COMM) and child.session != os.getsid(0)
            and child.session != pid)


def _children() -> set[int]:
    """This process's children (each thread's list: an orphan is adopted by one of them)."""
    out: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            out.update(int(p) for p in (task / "children").read_text().split())
    return out


def _reap_exited_qemu() -> bool:
    """Reap every exited QEMU child; whether there was one."""
    reaped = False
    for pid in _children():
        child = _stat(pid)
        if child is None or child.state != "Z" or not _adopted_qemu(pid, child):
            continue
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        reaped = True
        with _lock:
            done = _watched.pop(pid, None)
        if done is not None:
            done.set()
    return reaped


def _reap_qemu() -> None:
    while True:
        try:  # blocks until some child has exited; WNOWAIT leaves its status to be taken
            os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:  # no child at all
            time.sleep(_IDLE_S)
            continue
        if not _reap_exited_qemu():
            time.sleep(_IDLE_S)  # another waiter's child: it takes the status itself

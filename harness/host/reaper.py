"""This process as the reaper of the QEMU processes it starts, so an exited QEMU is gone at once.

libvirt daemonizes QEMU (a double fork), so QEMU's parent is init, or the nearest "child
subreaper" above it. An exited QEMU stays a zombie until that parent reaps it, and kill(pid, 0)
still finds a zombie: virDomainDestroy, and libvirt's cleanup after a QEMU that died, poll for
the process every 200 ms until it is gone (virProcessKillPainfullyDelay, src/util/virprocess.c,
libvirt 9.0), so they last as long as the zombie does. That is 1.1-1.5 s on our CI machine,
whose init reaps slowly, and forever in a container whose init never reaps.

`become_subreaper` makes this process the subreaper of its orphaned descendants
(PR_SET_CHILD_SUBREAPER, prctl(2): https://man7.org/linux/man-pages/man2/prctl.2.html), so a
QEMU it starts is its child; `watch` waits for that QEMU on a daemon thread (waitpid(2)), which
reaps it the moment it exits, whoever or whatever ended it.

Only `hotadd run` becomes a subreaper: that process owns every QEMU it starts and nothing else
daemonizes under it. A library caller (pytest, lab automation) is left as it is: every daemon
its other code starts (a fixture's sshd or libvirtd) would become its child too and stay a
zombie there. Without it, `watch` finds QEMU is not our child and libvirt waits as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading

_PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>, Linux 3.4
_lock = threading.Lock()
_subreaper = False


def become_subreaper() -> bool:
    """Make this process the subreaper of its descendants (idempotent); False where the
    kernel refuses, and then QEMU's reaping stays init's business as before."""
    global _subreaper
    with _lock:
        if not _subreaper:
            libc = ctypes.CDLL(None, use_errno=True)
            _subreaper = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
        return _subreaper


def watch(pid: int) -> threading.Event | None:
    """Reap `pid` as soon as it exits, on a daemon thread; the Event is set once it is reaped.
    None if `pid` is not a child of this process (started before `become_subreaper`, or by
    another process): its parent reaps it."""
    try:
        done, _status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    reaped = threading.Event()
    if done:
        reaped.set()
        return reaped

    def wait() -> None:
        with contextlib.suppress(ChildProcessError):  # reaped meanwhile (a second watch)
            os.waitpid(pid, 0)
        reaped.set()

    threading.Thread(target=wait, name=f"reap-{pid}", daemon=True).start()
    return reaped

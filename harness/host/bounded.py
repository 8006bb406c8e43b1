"""libvirt calls with a deadline, and a main thread that stays interruptible meanwhile.

A libvirt call waiting on QEMU's monitor (setVcpu, a QMP query, a screenshot) has no timeout
of its own: libvirt waits for the reply until QEMU answers or its monitor socket closes
(qemuMonitorSend, src/qemu/qemu_monitor.c). A QEMU stopped with SIGSTOP never answers, and
while the call is inside libvirt the Python signal handler cannot run, so Ctrl-C and SIGTERM
would wait too. `call` runs it on a worker thread and waits for it on the caller's: the wait
wakes every few hundred milliseconds, so a signal's KeyboardInterrupt is raised at once, and
a call past its deadline raises `CallTimedOut`. The worker stays blocked until QEMU answers
or is destroyed (virDomainDestroy kills QEMU before it takes the domain's job, so it works
while a monitor call is pending: qemuProcessBeginStopJob, src/qemu/qemu_process.c); it is a
daemon thread and holds nothing of ours.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_WAKE_S = 0.2  # how often the waiting thread wakes (a signal's handler runs at the latest then)


class CallTimedOut(Exception):
    """A bounded call did not return within its deadline (the caller says what that means)."""

    def __init__(self, what: str, timeout: float) -> None:
        self.what = what
        self.timeout = timeout
        super().__init__(f"{what} did not return within {timeout:g}s")


def call(fn: Callable[[], T], timeout: float, what: str) -> T:
    """`fn()` on a worker thread; its result or exception, or CallTimedOut after `timeout` s.
    `what` names the call (e.g. "setVcpu") for the error and the thread."""
    done = threading.Event()
    outcome: list[tuple[bool, object]] = []

    def work() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as exc:  # handed to the caller's thread below
            outcome.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=work, name=f"libvirt-{what}", daemon=True).start()
    deadline = time.monotonic() + max(timeout, 0.0)
    while not done.wait(min(_WAKE_S, max(deadline - time.monotonic(), 0.0))):
        if time.monotonic() >= deadline:
            raise CallTimedOut(what, timeout)
    ok, value = outcome[0]
    if ok:
        return value  # type: ignore[return-value]
    assert isinstance(value, BaseException)
    raise value

"""harness.host.bounded: a call's result and exceptions come through, a call that does not
return ends at its deadline, and a signal reaches the waiting thread while the call blocks."""

from __future__ import annotations

import os
import re
import signal
import threading
from types import FrameType

import pytest

from harness.host import bounded


class Interrupted(Exception):
    pass


def test_a_result_and_an_exception_come_through() -> None:
    assert bounded.call(lambda: 42, 10, "answer") == 42

    def fail() -> None:
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        bounded.call(fail, 10, "refuse")


def test_a_call_that_never_returns_ends_at_its_deadline() -> None:
    release = threading.Event()
    try:
        late = re.escape("stuck did not return within 0.3s")
        with pytest.raises(bounded.CallTimedOut, match=late) as err:
            bounded.call(release.wait, 0.3, "stuck")
        assert err.value.what == "stuck" and err.value.timeout == 0.3
    finally:
        release.set()


def test_a_signal_reaches_the_caller_while_the_call_blocks() -> None:
    """The handler runs on the waiting thread although the call never returns (a libvirt call
    blocked in C would hold it otherwise); the signal is sent from inside the call, so it
    is certainly in flight."""
    release = threading.Event()

    def blocked() -> None:
        os.kill(os.getpid(), signal.SIGUSR1)
        release.wait()

    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        with pytest.raises(Interrupted):
            bounded.call(blocked, 3600, "blocked")
        assert not release.is_set()
    finally:
        release.set()
        signal.signal(signal.SIGUSR1, previous)

"""Ctrl-C, SIGTERM and SIGHUP: unwind like KeyboardInterrupt, but never half-way through
creating or tearing down a VM, and know what is still left if a person insists.

The CLI installs the handler. A signal during a `shielded()` block (a domain being started or
torn down) is held until the block ends; a second one there abandons it. What a run owns (its
domain and scratch dir) is registered with `own` until its teardown finished, so the message a
person reads after an interrupt says exactly what is left (`leftovers`), not "torn down"
whatever happened.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_depth = 0  # nesting of shielded() blocks on the main thread
_pending: str | None = None  # a signal held until the shield ends
_owned: dict[str, str] = {}  # key -> what is left if its teardown never runs


def _handler(signum: int, _frame: FrameType | None) -> None:
    global _pending
    name = signal.Signals(signum).name
    if _depth and _pending is None:
        _pending = name
        print(f"hotadd: {name}: ending the VM start or teardown under way first "
              "(signal again to abandon it)", file=sys.stderr, flush=True)
        return
    raise KeyboardInterrupt(name)


def install() -> None:
    """Make SIGINT/SIGTERM/SIGHUP raise KeyboardInterrupt(signal name) on the main thread."""
    for sig in SIGNALS:
        signal.signal(sig, _handler)


@contextmanager
def shielded() -> Iterator[None]:
    """Hold interrupts until the block ends (main thread; only with `install()`ed handlers)."""
    global _depth, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    except BaseException:
        _depth -= 1
        if _depth == 0:
            _pending = None  # the block is unwinding anyway: the held signal adds nothing
        raise
    _depth -= 1
    if _depth == 0 and _pending is not None:
        name, _pending = _pending, None
        raise KeyboardInterrupt(name)


def held() -> str | None:
    """The signal a `shielded()` block holds, if any: a step that can be abandoned cleanly
    (a VM start: its QEMU is killed) asks, and ends early instead of finishing."""
    return _pending


def own(key: str, what: str) -> None:
    """Register something this process must tear down (`what` names it for a person)."""
    _owned[key] = what


def release(key: str) -> None:
    """Its teardown finished (or it is deliberately kept)."""
    _owned.pop(key, None)


def leftovers() -> tuple[str, ...]:
    """What this process started and has not torn down."""
    return tuple(_owned.values())


def signal_name(exc: KeyboardInterrupt) -> str:
    """The signal behind a KeyboardInterrupt: its argument, or SIGINT (Python's own Ctrl-C)."""
    return str(exc) or "SIGINT"

"""Following a guest's serial console while the run goes on, line by line, with arrival times.

The serial console is a file QEMU appends to (`<serial type='file'>`). `ConsoleFollower` follows
it on one thread and wakes on inotify's IN_MODIFY (Linux inotify(7)), so a line is known
within about a millisecond of QEMU writing it, without polling the guest. Every line carries
the host Unix time it was read. Anyone who needs the console live uses this one reader: the
probe's pushed records (`harness.live`) and a health watch (panics, lockups) alike, through
`lines()` / `wait()` or `subscribe()`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

_IN_MODIFY = 0x00000002
_SAFETY_POLL_S = 0.25  # reads the file even without an inotify event (a missed watch)


@dataclass(frozen=True)
class ConsoleLine:
    t_wall: float  # host Unix time the line was read
    text: str


def _inotify(path: Path) -> int | None:
    """An inotify descriptor watching `path` for writes, or None where there is none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = int(libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
    except (OSError, AttributeError):
        return None
    if fd < 0:
        return None
    if libc.inotify_add_watch(fd, os.fsencode(path), _IN_MODIFY) < 0:
        os.close(fd)
        return None
    return fd


class ConsoleFollower:
    """Follow `path` from its current end (or from the start with `from_start`) until closed.

    Thread-safe: the follower thread appends lines; callers read `lines()` or `wait()`.
    """

    def __init__(self, path: Path, from_start: bool = False) -> None:
        self.path = path
        self._lines: list[ConsoleLine] = []
        self._partial = b""
        self._cond = threading.Condition()
        self._subscribers: list[Callable[[ConsoleLine], None]] = []
        path.touch(exist_ok=True)
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        if not from_start:
            self._file.seek(0, os.SEEK_END)
        self._inotify = _inotify(path)
        self._wake_r, self._wake_w = os.pipe()
        self._stopped = False
        self._thread = threading.Thread(target=self._follow, name=f"console {path.name}",
                                        daemon=True)
        self._thread.start()

    def subscribe(self, callback: Callable[[ConsoleLine], None]) -> None:
        """Call `callback` on the follower thread for every new line (it must not block)."""
        with self._cond:
            self._subscribers.append(callback)

    def lines(self) -> list[ConsoleLine]:
        with self._cond:
            return list(self._lines)

    def wait(self, ready: Callable[[Sequence[ConsoleLine]], bool], timeout: float) -> bool:
        """Wait until `ready(lines)` holds (checked on every new line) or `timeout` passes."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not ready(self._lines):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopped:
                    return False
                self._cond.wait(remaining)
            return True

    def _read_new(self) -> None:
        data = self._file.read()
        if not data:
            return
        now = time.time()
        chunks = (self._partial + data).split(b"\n")
        self._partial = chunks.pop()
        new = [ConsoleLine(now, c.decode("utf-8", errors="replace").rstrip("\r"))
               for c in chunks]
        with self._cond:
            self._lines.extend(new)
            subscribers = list(self._subscribers)
            self._cond.notify_all()
        for line in new:
            for callback in subscribers:
                callback(line)

    def _follow(self) -> None:
        watched = [self._wake_r] + ([self._inotify] if self._inotify is not None else [])
        while not self._stopped:
            try:
                ready, _, _ = select.select(watched, [], [], _SAFETY_POLL_S)
            except (OSError, ValueError):
                return
            if self._inotify is not None and self._inotify in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._inotify, 65536)  # drain: the events only mean "look"
            try:
                self._read_new()
            except (OSError, ValueError):
                return

    def close(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        os.write(self._wake_w, b"x")
        self._thread.join(5)
        with self._cond:
            self._cond.notify_all()
        for fd in (self._wake_r, self._wake_w, self._inotify):
            if fd is not None:
                os.close(fd)
        self._file.close()

    def __enter__(self) -> ConsoleFollower:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

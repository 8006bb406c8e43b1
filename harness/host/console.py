"""The guest's serial console: read from libvirt into a local file, and followed line by line.

`ConsoleStream` reads the console through libvirt's console stream (virDomainOpenConsole on a
non-blocking virStream, https://libvirt.org/html/libvirt-libvirt-domain.html#virDomainOpenConsole)
on libvirt's event thread and appends it to the run's local serial log, the one file every
reader here uses. It is the same for a local and a remote (`qemu+ssh://`) libvirt: the bytes
come over libvirt's own connection. The domain is started (or restored) paused and resumed only
once the stream is attached, so the log begins with the firmware's first byte.

`ConsoleFollower` follows that file on one thread and wakes on inotify's IN_MODIFY (Linux
inotify(7)), so a line is known within about a millisecond of the stream writing it, without
polling the guest. Every line carries the host Unix time it was read. Anyone who needs the
console live uses this one reader: the probe's pushed records (`harness.live`) and a health
watch (panics, lockups) alike, through `lines()` / `wait()` or `subscribe()`.
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
from typing import Any

import libvirt

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


#: A console the domain no longer has ends with its QEMU (destroy, save, crash); wait this long
#: for the stream's last bytes and its end before letting it go.
STREAM_END_S = 5.0
_EVENTS = (libvirt.VIR_STREAM_EVENT_READABLE | libvirt.VIR_STREAM_EVENT_ERROR
           | libvirt.VIR_STREAM_EVENT_HANGUP)


class ConsoleStream:
    """Appends what the domain's serial console sends to `path`, until its QEMU ends or
    `close()`. Attach it while the domain is paused (VIR_DOMAIN_START_PAUSED,
    VIR_DOMAIN_SAVE_PAUSED) and resume after: QEMU's pty drops what the guest writes while no
    one reads it. Needs libvirt's event loop running (`harness.host.connection`).

    After the constructor the stream belongs to libvirt's event thread: `_on_event` reads it
    there, and `close()` ends it there too (a one-shot timer), never concurrently.
    """

    def __init__(self, dom: libvirt.virDomain, path: Path) -> None:
        self.path = path
        self.error: str | None = None  # why the stream ended early, if it did
        self._ended = threading.Event()
        self._file = open(path, "ab", buffering=0)  # noqa: SIM115 - closed by _end()
        stream = self._stream = dom.connect().newStream(libvirt.VIR_STREAM_NONBLOCK)
        try:
            # FORCE takes the console from a stale session; SAFE opens it only where libvirt
            # keeps it exclusive (two readers would each get part of the output)
            dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE
                            | libvirt.VIR_DOMAIN_CONSOLE_SAFE)
            stream.eventAddCallback(_EVENTS, self._on_event, None)  # may fire at once
        except BaseException:
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
            self._file.close()
            raise

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def _on_event(self, stream: libvirt.virStream, events: int, _opaque: Any) -> None:
        """On libvirt's event thread: copy what is readable; end at EOF, an error or hangup."""
        if self._ended.is_set():
            return
        if events & libvirt.VIR_STREAM_EVENT_READABLE:
            while True:
                try:
                    data = stream.recv(65536)
                except libvirt.libvirtError as exc:  # e.g. EIO once QEMU closed its pty
                    self._end(abort=True, error=exc.get_error_message())
                    return
                if isinstance(data, int):  # -2: nothing more now
                    break
                if not data:
                    self._end(abort=False)
                    return
                try:
                    self._file.write(data)
                except OSError as exc:
                    self._end(abort=True, error=f"cannot write {self.path}: {exc}")
                    return
        if events & (libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP):
            self._end(abort=True, error=None)

    def _end(self, abort: bool, error: str | None = None) -> None:
        """On libvirt's event thread: let the stream go and close the file, once."""
        if self._ended.is_set():
            return
        self.error = error
        try:
            with contextlib.suppress(libvirt.libvirtError):
                self._stream.eventRemoveCallback()
            with contextlib.suppress(libvirt.libvirtError):
                if abort:
                    self._stream.abort()
                else:
                    self._stream.finish()
        finally:
            self._file.close()
            self._ended.set()

    def wait_ended(self, timeout: float = STREAM_END_S) -> bool:
        """Wait for the stream to end by itself (its QEMU is gone), so its last bytes are in
        the file; False if it did not within `timeout` s."""
        return self._ended.wait(timeout)

    def close(self, timeout: float = STREAM_END_S) -> None:
        """End the stream now (on libvirt's event thread) and wait up to `timeout` s for it.
        Idempotent. Past the timeout (an event thread that never runs) the stream is left to
        the process's end."""
        if self._ended.is_set():
            return

        def end_now(timer: int, _opaque: Any) -> None:
            with contextlib.suppress(libvirt.libvirtError):
                libvirt.virEventRemoveTimeout(timer)
            self._end(abort=True)

        timer = libvirt.virEventAddTimeout(0, end_now, None)
        if not self._ended.wait(timeout):
            with contextlib.suppress(libvirt.libvirtError):
                libvirt.virEventRemoveTimeout(timer)


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

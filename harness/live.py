"""The probe's records while the run goes on: pushed over the serial console, fetched as a
fallback.

The reference probe printk's every record as it writes it ("hotadd-probe: {json}"), and the
console reaches the host as QEMU writes it (`harness.host.console`): hotadd knows of a
`complete` within milliseconds, instead of at its next fetch over the transport. Guests whose
probe does not print to the console (Windows) are fetched over the transport as before, and
so is any add the console stays silent about. The transport stays the source of truth at
collect (`Session.final_records`); the console only tells hotadd *when* to look.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.guests.base import GuestKind, Session
from harness.host.console import ConsoleFollower, ConsoleLine
from harness.records import NotifyRecord, NotifyState, Phase, parse_records

TRANSPORT_EVERY_S = 1.0  # how often to fetch over the transport while the console is silent


@dataclass(frozen=True)
class AddSeen:
    """One add's records as hotadd learned them."""

    start: NotifyRecord | None
    end: NotifyRecord | None
    known_at: float | None  # host Unix time hotadd had the end record
    via: str  # "console" or "transport" (or "none")


def hotadd_notifies(text: str) -> list[NotifyRecord]:
    return [r for r in parse_records(text.splitlines())
            if isinstance(r, NotifyRecord) and r.phase is Phase.HOTADD]


def start_end(new: Sequence[NotifyRecord]) -> tuple[NotifyRecord | None, NotifyRecord | None]:
    """The first start among `new` and the complete/failure of the same processor."""
    start = next((r for r in new if r.state is NotifyState.START), None)
    end = next((r for r in new if start and r.state is not NotifyState.START
                and r.nt_number == start.nt_number), None)
    return start, end


class RecordFeed:
    """Records of one probe load: start it before the load, `mark()` before each add, then
    `wait_add()`."""

    def __init__(self, kind: GuestKind, session: Session, serial_log: Path) -> None:
        self.kind = kind
        self.session = session
        self.console = ConsoleFollower(serial_log)
        self.seen = AddSeen(None, None, None, "none")  # the current add's end, once known
        self._next_fetch = 0.0

    def _console_notifies(self, lines: list[ConsoleLine]) -> list[tuple[float, NotifyRecord]]:
        """Hot-add notifies on the console since the feed began, each with its arrival."""
        out = []
        for line in lines:
            text = self.kind.console_record(line.text)
            if text:
                out += [(line.t_wall, r) for r in hotadd_notifies(text)]
        return out

    def _console_records_present(self, lines: list[ConsoleLine]) -> bool:
        return any(self.kind.console_record(line.text) for line in lines)

    def mark(self) -> tuple[int, int]:
        """How many hot-add notifies the console and the transport have now (call before an
        add; forgets what the previous add's polls learned)."""
        self.seen = AddSeen(None, None, None, "none")
        self._next_fetch = 0.0
        return (len(self._console_notifies(self.console.lines())),
                len(hotadd_notifies(self.session.live_records())))

    def _console_end(self, mark: tuple[int, int],
                     lines: Sequence[ConsoleLine] | None = None) -> AddSeen | None:
        seen = self._console_notifies(
            list(self.console.lines() if lines is None else lines))[mark[0]:]
        start, end = start_end([r for _, r in seen])
        if end is None:
            return None
        return AddSeen(start, end, next(t for t, r in seen if r is end), "console")

    def poll(self, mark: tuple[int, int]) -> list[NotifyRecord]:
        """The hot-add notifies since `mark`, without waiting: the console's as soon as it
        shows an end, else the transport's (fetched every TRANSPORT_EVERY_S, or every poll
        while the console carries no records at all). `seen` says when and how the end came;
        `harness.observation.await_add` calls this under the add's one deadline."""
        if self.seen.end is not None:
            return [r for r in (self.seen.start, self.seen.end) if r is not None]
        found = self._console_end(mark)
        if found is not None:
            self.seen = found
            return [r for r in (found.start, found.end) if r is not None]
        lines = self.console.lines()
        if time.monotonic() < self._next_fetch and any(
                self.kind.console_record(line.text) for line in lines):
            return []
        self._next_fetch = time.monotonic() + TRANSPORT_EVERY_S
        new = hotadd_notifies(self.session.live_records())[mark[1]:]
        start, end = start_end(new)
        if end is not None:
            self.seen = AddSeen(start, end, time.time(), "transport")
        return new

    def hotadds(self) -> list[NotifyRecord]:
        """Every hot-add notify of this load so far, without waiting: the console's, or the
        transport's (fetched every TRANSPORT_EVERY_S) when it has more."""
        console = [r for _, r in self._console_notifies(self.console.lines())]
        if time.monotonic() < self._next_fetch:
            return console
        self._next_fetch = time.monotonic() + TRANSPORT_EVERY_S
        fetched = hotadd_notifies(self.session.live_records())
        return fetched if len(fetched) > len(console) else console

    def wait_hotadds(self, done: Callable[[list[NotifyRecord]], bool], seconds: float) -> None:
        """Sleep up to `seconds`, woken early when the console's hot-add notifies satisfy
        `done`."""
        self.console.wait(lambda lines: done([r for _, r in self._console_notifies(
            list(lines))]), seconds)

    def pause(self, mark: tuple[int, int], seconds: float) -> None:
        """Sleep up to `seconds`, woken early when the console shows the add's end."""
        self.console.wait(lambda lines: self._console_end(mark, lines) is not None, seconds)

    def close(self) -> None:
        self.console.close()

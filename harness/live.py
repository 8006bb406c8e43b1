"""The probe's records while the run goes on: pushed over the serial console, fetched as a
fallback.

The reference probe printk's every record as it writes it ("hotadd-probe: {json}"), and the
console reaches the host as QEMU writes it (`harness.host.console`): hotadd knows of a
`complete` within milliseconds, instead of at its next fetch over the transport. Guests whose
probe does not print to the console (Windows) are fetched over the transport as before, and
so is any add the console stays silent about. The transport stays the source of truth at
collect (`GuestSession.final_records`); the console only tells hotadd *when* to look.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.guests.base import GuestKind, GuestSession
from harness.host.console import ConsoleLine, ConsoleWatch
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


def _start_end(new: list[NotifyRecord]) -> tuple[NotifyRecord | None, NotifyRecord | None]:
    start = next((r for r in new if r.state is NotifyState.START), None)
    end = next((r for r in new if start and r.state is not NotifyState.START
                and r.nt_number == start.nt_number), None)
    return start, end


class RecordFeed:
    """Records of one probe load: start it before the load, `mark()` before each add, then
    `wait_add()`."""

    def __init__(self, kind: GuestKind, session: GuestSession, serial_log: Path) -> None:
        self.kind = kind
        self.session = session
        self.console = ConsoleWatch(serial_log)

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
        """How many hot-add notifies the console and the transport have now."""
        return (len(self._console_notifies(self.console.lines())),
                len(hotadd_notifies(self.session.live_records())))

    def wait_add(self, mark: tuple[int, int], timeout: float,
                 tick: Callable[[], None]) -> AddSeen:
        """The start and end of the add made after `mark`, from the console as soon as it
        shows them, else from the transport (every TRANSPORT_EVERY_S). `tick` runs between
        waits (it raises when the guest died)."""
        console_mark, transport_mark = mark
        deadline = time.monotonic() + timeout
        next_fetch = time.monotonic() + TRANSPORT_EVERY_S
        start: NotifyRecord | None = None

        def console_end(lines: list[ConsoleLine]) -> tuple[float, NotifyRecord,
                                                            NotifyRecord] | None:
            seen = self._console_notifies(lines)[console_mark:]
            s, e = _start_end([r for _, r in seen])
            if s is None or e is None:
                return None
            return next(t for t, r in seen if r is e), s, e

        while time.monotonic() < deadline:
            found = console_end(self.console.lines())
            if found is not None:
                return AddSeen(found[1], found[2], found[0], "console")
            if time.monotonic() >= next_fetch or not self._console_records_present(
                    self.console.lines()):
                new = hotadd_notifies(self.session.live_records())[transport_mark:]
                start, end = _start_end(new)
                if end is not None:
                    return AddSeen(start, end, time.time(), "transport")
                next_fetch = time.monotonic() + TRANSPORT_EVERY_S
            tick()
            self.console.wait(lambda lines: console_end(list(lines)) is not None,
                              min(0.1, max(0.0, deadline - time.monotonic())))
        return AddSeen(start, None, None, "none")

    def close(self) -> None:
        self.console.close()

"""A record stream cut, as it arrives, into the parts the rules talk about: replay, hot-adds,
after the end; and Start/Complete/Failure paired into episodes while streaming.

The cut is by position: notifies after the register call returned are hot-adds, after the end
they are "after the end", whatever their `phase` label says (`phase.label` reports a label
that disagrees). Inside the registration window (before `registered`/`register_failed`) the
position alone cannot tell a replay from a hot-add that landed while the register call still
ran, so there the probe's label decides: it is the thread's (the replay runs on the
registering thread, a hot-add on another; driver/recorder/probe_core.c), so `hotadd` there is
a hot-add and is judged with the other hot-adds. Nothing here keeps the whole trace: the
landmarks, one open episode per processor, and the replay (bounded by the processors at load,
capped at `MAX_REPLAY`) are all the oracle holds, whatever the file's size.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from harness.records import (
    ADD_EXISTING,
    DriverEvent,
    DriverRecord,
    NotifyRecord,
    NotifyState,
    Phase,
    Record,
)

_REGISTRATION = (DriverEvent.REGISTERED, DriverEvent.REGISTER_FAILED)
# After these the callback is not registered: no notify may follow.
_END = (DriverEvent.REGISTER_FAILED, DriverEvent.DEREGISTERED, DriverEvent.UNLOAD)
#: Distinct processors the oracle keeps state for (consistency of (group, number), the indices
#: handed out): 1,024 full processor groups of 64
#: (https://learn.microsoft.com/en-us/windows/win32/procthread/processor-groups), far beyond
#: any machine. Past it a trace says so, and later processors are not tracked: memory stays
#: bounded whatever the file holds.
MAX_PROCESSORS = 65_536
#: Replay notifies kept for the replay rules (a Start and a Complete/Failure per processor);
#: past it a trace is judged on the first MAX_REPLAY only, and says so.
MAX_REPLAY = 2 * MAX_PROCESSORS


class Section(enum.Enum):
    """Where a notify arrived: inside the register call, while registered, or after the end."""

    REPLAY = "replay"
    HOTADD = "hotadd"
    AFTER_END = "after_end"


@dataclass
class Landmarks:
    """What the stream has shown so far: the records every rule needs to know about."""

    load: DriverRecord | None = None
    registration: DriverRecord | None = None  # the first registered / register_failed
    end: DriverRecord | None = None  # the record that ended the registration, if any
    records: int = 0

    def see(self, record: Record) -> None:
        self.records += 1
        if not isinstance(record, DriverRecord):
            return
        if record.event is DriverEvent.LOAD and self.load is None:
            self.load = record
        if record.event in _REGISTRATION and self.registration is None:
            self.registration = record
        if record.event in _END and self.end is None:
            self.end = record

    @property
    def in_window(self) -> bool:
        """Inside the register call: before `registered`/`register_failed` (and any end)."""
        return self.registration is None and self.end is None

    def section_of(self, record: NotifyRecord) -> Section:
        """Where a notify arriving now belongs: inside the registration window its label
        decides (a `hotadd` there is a hot-add on another thread), elsewhere its position."""
        if self.end is not None:
            return Section.AFTER_END
        if self.registration is None:
            return Section.HOTADD if record.phase is Phase.HOTADD else Section.REPLAY
        return Section.HOTADD

    @property
    def add_existing(self) -> bool:
        return self.load is not None and bool((self.load.flags or 0) & ADD_EXISTING)

    @property
    def boot_count(self) -> int | None:
        return self.load.active_count if self.load is not None else None


@dataclass
class Episode:
    """One Start and the Complete/Failure that closed it (None: never closed).

    `number` counts Starts in its section (0, 1, ...); `restarted` is set when the same
    nt_number got another Start while this one was open; `inside` is the first Start of any
    processor that arrived while this one was open.
    """

    start: NotifyRecord
    number: int
    close: NotifyRecord | None = None
    restarted: bool = False
    inside: NotifyRecord | None = None

    @property
    def vetoed(self) -> bool:
        return self.start.op_status != 0


@dataclass
class Pairer:
    """Match each Start with the next Complete/Failure for the same nt_number, as records
    arrive. `feed` returns the episodes that ended (closed, or cut by a second Start) and
    whether the record was an orphan (a Complete/Failure with no open Start); `finish` the
    episodes never closed, in Start order."""

    open: dict[int, Episode] = field(default_factory=dict)
    starts: int = 0
    _last: Episode | None = None  # the most recent Start's episode

    def feed(self, record: NotifyRecord) -> tuple[list[Episode], bool]:
        if record.state is NotifyState.START:
            ended: list[Episode] = []
            last = self._last
            if last is not None and last.close is None and last.inside is None and (
                    self.open.get(last.start.nt_number) is last):
                last.inside = record  # the first Start after it, while it is still open
            previous = self.open.get(record.nt_number)
            if previous is not None:
                previous.restarted = True
                ended.append(previous)
            episode = Episode(record, self.starts)
            self.starts += 1
            self.open[record.nt_number] = episode
            self._last = episode
            return ended, False
        if record.nt_number not in self.open:
            return [], True
        episode = self.open.pop(record.nt_number)
        episode.close = record
        return [episode], False

    def finish(self) -> list[Episode]:
        left = sorted(self.open.values(), key=lambda e: e.number)
        self.open = {}
        return left

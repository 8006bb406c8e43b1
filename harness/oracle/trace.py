"""A record list cut into the parts the rules talk about: replay, hot-adds, after the end.

The cut is by position: notifies after the register call returned are hot-adds, after the end
they are "after the end", whatever their `phase` label says (`phase.label` reports a label
that disagrees). Inside the registration window (before `registered`/`register_failed`) the
position alone cannot tell a replay from a hot-add that landed while the register call still
ran, so there the probe's label decides: it is the thread's (the replay runs on the
registering thread, a hot-add on another; driver/probe_core.c), so `hotadd` there is a hot-add
and is judged with the other hot-adds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Episode:
    """One Start and the Complete/Failure that closed it (None: never closed).

    `start_at`/`close_at` are positions in the sequence handed to `pair_up` (close_at is -1
    when never closed); `restarted` is set when the same nt_number got another Start while this
    one was open.
    """

    start: NotifyRecord
    close: NotifyRecord | None
    start_at: int
    close_at: int = -1
    restarted: bool = False

    @property
    def vetoed(self) -> bool:
        return self.start.op_status != 0


@dataclass(frozen=True)
class Pairing:
    episodes: tuple[Episode, ...]  # in Start order
    orphans: tuple[NotifyRecord, ...]  # a Complete/Failure with no open Start


def pair_up(notifies: Sequence[NotifyRecord]) -> Pairing:
    """Match each Start with the next Complete/Failure for the same nt_number."""
    open_starts: dict[int, tuple[int, NotifyRecord]] = {}
    done: list[Episode] = []
    orphans: list[NotifyRecord] = []
    for at, record in enumerate(notifies):
        if record.state is NotifyState.START:
            previous = open_starts.get(record.nt_number)
            if previous is not None:
                done.append(Episode(previous[1], None, previous[0], restarted=True))
            open_starts[record.nt_number] = (at, record)
        elif record.nt_number in open_starts:
            start_at, start = open_starts.pop(record.nt_number)
            done.append(Episode(start, record, start_at, at))
        else:
            orphans.append(record)
    done.extend(Episode(start, None, at) for at, start in open_starts.values())
    done.sort(key=lambda episode: episode.start_at)
    return Pairing(tuple(done), tuple(orphans))


@dataclass(frozen=True)
class Trace:
    """The records plus the landmarks every rule needs."""

    records: tuple[Record, ...]
    load: DriverRecord | None
    registration: DriverRecord | None  # the first registered / register_failed
    replay: tuple[NotifyRecord, ...]  # labelled replay, before the register call returned
    hotadd: tuple[NotifyRecord, ...]  # window hot-adds and notifies while registered, in order
    after_end: tuple[NotifyRecord, ...]  # notifies after register_failed/deregistered/unload
    end: DriverRecord | None  # the record that ended the registration, if any
    dropped: tuple[DriverRecord, ...] = ()  # `dropped` lines: records the probe lost
    # Labelled hotadd, before the register call returned: hot-adds on another thread while the
    # register call ran (also in `hotadd`).
    window_hotadd: tuple[NotifyRecord, ...] = ()

    @property
    def add_existing(self) -> bool:
        return self.load is not None and bool((self.load.flags or 0) & ADD_EXISTING)

    @property
    def boot_count(self) -> int | None:
        return self.load.active_count if self.load is not None else None

    @property
    def replay_veto(self) -> NotifyRecord | None:
        """The first replay Start the probe vetoed."""
        return next((r for r in self.replay
                     if r.state is NotifyState.START and r.op_status != 0), None)


def _first(records: Sequence[Record], events: tuple[DriverEvent, ...]) -> int | None:
    return next((i for i, r in enumerate(records)
                 if isinstance(r, DriverRecord) and r.event in events), None)


def build_trace(records: Sequence[Record]) -> Trace:
    recs = tuple(records)
    load = next((r for r in recs if isinstance(r, DriverRecord) and r.event is DriverEvent.LOAD),
                None)
    reg_at = _first(recs, _REGISTRATION)
    end_at = _first(recs, _END)
    stop = len(recs) if end_at is None else end_at
    replay_stop = stop if reg_at is None else min(reg_at, stop)
    registration = recs[reg_at] if reg_at is not None else None
    end = recs[end_at] if end_at is not None else None
    assert registration is None or isinstance(registration, DriverRecord)
    assert end is None or isinstance(end, DriverRecord)

    def notifies(lo: int, hi: int) -> tuple[NotifyRecord, ...]:
        return tuple(r for r in recs[lo:hi] if isinstance(r, NotifyRecord))

    window = notifies(0, replay_stop)
    window_hotadd = tuple(r for r in window if r.phase is Phase.HOTADD)
    return Trace(
        records=recs, load=load, registration=registration,
        replay=tuple(r for r in window if r.phase is Phase.REPLAY),
        hotadd=window_hotadd + notifies(replay_stop, stop),
        after_end=notifies(stop, len(recs)), end=end,
        dropped=tuple(r for r in recs
                      if isinstance(r, DriverRecord) and r.event is DriverEvent.DROPPED),
        window_hotadd=window_hotadd,
    )

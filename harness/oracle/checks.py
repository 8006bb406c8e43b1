"""The trace checks. Each yields `Hit`s naming the rule it breaks; severity is not decided here.

One class per concern. The engine streams the records through every check once, in file
order: `record` sees each record (with the section a notify arrived in), `episode` each
Start once it ended (closed, cut by a second Start, or never closed), `orphan` each
Complete/Failure without an open Start, and `finish` the end of the trace. A check keeps only
what its rule needs (counts, the last record, one entry per processor), never the trace, so
`hotadd check` runs in linear time and bounded memory. The facts behind every rule are in
`harness.oracle.rules` and `docs/processor-change-semantics.md`.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice

from harness.oracle.host import HostFacts
from harness.oracle.rules import Profile
from harness.oracle.trace import MAX_PROCESSORS, MAX_REPLAY, Episode, Landmarks, Section
from harness.records import (
    DriverEvent,
    DriverRecord,
    NotifyRecord,
    NotifyState,
    Phase,
    Record,
    nt_success,
)

APC_LEVEL = 1
MAX_REPORTS_PER_RULE = 8  # a broken trace should say where, not flood the log


@dataclass(frozen=True)
class Hit:
    rule_id: str
    message: str
    seqs: tuple[int, ...]


@dataclass
class Context:
    """What every check may read: the landmarks so far, the profile, the host's facts, and the
    replay (kept whole up to MAX_REPLAY notifies: its rules compare all of it)."""

    marks: Landmarks
    profile: Profile
    host: HostFacts | None
    replay: list[NotifyRecord] = field(default_factory=list)
    replay_beyond: int = 0  # replay notifies past MAX_REPLAY, not kept
    first_replay: NotifyRecord | None = None

    def keep_replay(self, record: NotifyRecord) -> None:
        self.first_replay = self.first_replay or record
        if len(self.replay) < MAX_REPLAY:
            self.replay.append(record)
        else:
            self.replay_beyond += 1

    @property
    def adds_during_load(self) -> int:
        return self.host.adds_during_load if self.host is not None else 0

    @property
    def boot_base(self) -> int | None:
        """The guest's boot vCPUs when the host gave them, else the load count."""
        if self.host is not None and self.host.boot_cpus is not None:
            return self.host.boot_cpus
        return self.marks.boot_count

    @property
    def replay_ceiling(self) -> int | None:
        """The most processors the replay may cover: the boot vCPUs plus the adds in flight
        during the load (replay.active_at_registration), and never less than the load count
        (a load count beyond that is host.boot_count's finding)."""
        load, base = self.marks.boot_count, self.boot_base
        if load is None or base is None:
            return None
        return max(load, base + self.adds_during_load)

    @property
    def active_at_registration(self) -> int | None:
        """Processors active when the replay ran: its first record's active_count where
        replay.active_at_registration allows it (load count .. replay_ceiling), else the load
        count. Processors 0..N-1 are the replay's; a hot-add of one of them is a second
        sighting (index.unused)."""
        load, first, ceiling = self.marks.boot_count, self.first_replay, self.replay_ceiling
        if load is None or first is None or ceiling is None:
            return load
        return first.active_count if load <= first.active_count <= ceiling else load

    @property
    def replay_covered(self) -> int:
        """Adds the replay covered (online before the register call ran): the processors it
        ran with beyond the boot vCPUs, never more than were in flight during the load."""
        base, active = self.boot_base, self.active_at_registration
        if base is None or active is None or not self.marks.add_existing:
            return 0
        return min(max(active - base, 0), self.adds_during_load)

    @property
    def replay_veto(self) -> NotifyRecord | None:
        """The first replay Start the probe vetoed."""
        return next((r for r in self.replay
                     if r.state is NotifyState.START and r.op_status != 0), None)


class Check:
    """One concern of the rules, fed the trace once. Every hook yields the hits it found."""

    def record(self, ctx: Context, r: Record, where: Section | None) -> Iterator[Hit]:
        """Every record in order; `where` is the section of a notify (None: driver record)."""
        return iter(())

    def episode(self, ctx: Context, ep: Episode, where: Section) -> Iterator[Hit]:
        """A replay or hot-add Start that ended (closed, restarted, or never closed)."""
        return iter(())

    def orphan(self, ctx: Context, r: NotifyRecord, where: Section) -> Iterator[Hit]:
        """A Complete/Failure with no open Start for its nt_number."""
        return iter(())

    def finish(self, ctx: Context) -> Iterator[Hit]:
        """The trace ended."""
        return iter(())


def _hit(rule_id: str, message: str, *records: Record | None) -> Hit:
    return Hit(rule_id, message, tuple(r.seq for r in records if r is not None))


def _nt(record: NotifyRecord) -> str:
    return f"{record.state.value} for nt {record.nt_number}"


def _of(records: Sequence[NotifyRecord], state: NotifyState) -> list[NotifyRecord]:
    return [r for r in records if r.state is state]


class SequenceCheck(Check):
    def __init__(self) -> None:
        self.prev: Record | None = None

    def record(self, ctx: Context, r: Record, where: Section | None) -> Iterator[Hit]:
        prev, self.prev = self.prev, r
        if prev is None:
            if not (isinstance(r, DriverRecord) and r.event is DriverEvent.LOAD):
                yield _hit("seq.first_load", "the first record is not the driver's load", r)
            if r.seq != 1:
                yield _hit("seq.complete", f"the first record has seq {r.seq}, not 1", r)
            return
        if r.seq == prev.seq + 1:
            pass
        elif r.seq > prev.seq:
            yield _hit("seq.complete", f"seq jumps from {prev.seq} to {r.seq}: "
                       f"{r.seq - prev.seq - 1} record(s) missing", prev, r)
        else:
            yield _hit("seq.complete", f"seq {r.seq} follows seq {prev.seq}: a record is "
                       "repeated or out of order", prev, r)
        if r.t_ns < prev.t_ns:
            yield _hit("time.monotonic", f"t_ns goes back {prev.t_ns - r.t_ns} ns", prev, r)

    def finish(self, ctx: Context) -> Iterator[Hit]:
        if self.prev is None:
            yield Hit("seq.first_load",
                      "the trace is empty: the probe never wrote its load record", ())


# Which driver event may follow which (None: before any driver record).
_NEXT_EVENT: dict[DriverEvent | None, frozenset[DriverEvent]] = {
    None: frozenset({DriverEvent.LOAD}),
    DriverEvent.LOAD: frozenset({DriverEvent.REGISTERED, DriverEvent.REGISTER_FAILED}),
    DriverEvent.REGISTERED: frozenset({DriverEvent.DEREGISTERED, DriverEvent.UNLOAD}),
    DriverEvent.REGISTER_FAILED: frozenset({DriverEvent.UNLOAD}),
    DriverEvent.DEREGISTERED: frozenset({DriverEvent.UNLOAD}),
    DriverEvent.UNLOAD: frozenset(),
}


# Where the Windows probe's ring size is set: the fix for every `dropped` line.
RING_SIZE_FIX = ("raise HAP_RING_CAPACITY in driver/recorder/probe_public.h (driver/README.md, "
                 "\"The dropped event\"), rebuild the driver and run again")


class LossCheck(Check):
    """A `dropped` line takes its own seq, so the loss is no seq gap: it is reported here,
    every one with the total (so the first few reported are kept, the rest counted)."""

    def __init__(self) -> None:
        self.kept: list[DriverRecord] = []
        self.places = 0
        self.total = 0

    def record(self, ctx: Context, r: Record, where: Section | None) -> Iterator[Hit]:
        if isinstance(r, DriverRecord) and r.event is DriverEvent.DROPPED:
            self.places += 1
            self.total += r.count or 0
            if len(self.kept) < MAX_REPORTS_PER_RULE:
                self.kept.append(r)
        return iter(())

    def finish(self, ctx: Context) -> Iterator[Hit]:
        in_all = (f" ({self.total} in all, in {self.places} places)" if self.places > 1
                  else "")
        for record in self.kept:
            yield _hit("records.none_dropped", f"the probe lost {record.count} record(s) just "
                       f"before this point{in_all}: its record ring was full, so the trace is "
                       "incomplete and other findings may be consequences of the loss; fix: "
                       f"{RING_SIZE_FIX}", record)
        for _ in range(self.places - len(self.kept)):  # counted, not kept (past the cap)
            yield Hit("records.none_dropped", "", ())


class DriverCheck(Check):
    def __init__(self) -> None:
        self.state: DriverEvent | None = None
        self.unload: DriverRecord | None = None

    def record(self, ctx: Context, r: Record, where: Section | None) -> Iterator[Hit]:
        if not isinstance(r, DriverRecord):
            return
        if r.event is DriverEvent.DROPPED:
            # A loss report, not a life-cycle step (records.none_dropped judges it): after
            # load it may come anywhere, last included (the final flush's report).
            if self.state is None:
                yield _hit("driver.order", "dropped before load", r)
            return
        if self.unload is not None:
            yield _hit("driver.order", f"{r.event.value} after unload", self.unload, r)
            return
        if r.event not in _NEXT_EVENT[self.state]:
            after = f"after {self.state.value}" if self.state else "before load"
            yield _hit("driver.order", f"{r.event.value} {after}", r)
        if r.event is DriverEvent.UNLOAD:
            self.unload = r
            if self.state is DriverEvent.REGISTERED:
                yield _hit("driver.deregister_before_unload",
                           "unload while the callback is still registered", r)
        if r.event is DriverEvent.REGISTER_FAILED and nt_success(r.status or 0):
            yield _hit("driver.register_failed_status",
                       f"register_failed with success status 0x{r.status or 0:08X}", r)
        self.state = r.event

    def finish(self, ctx: Context) -> Iterator[Hit]:
        if self.state is DriverEvent.LOAD:
            yield _hit("driver.order", "the trace ends before the register call returned",
                       ctx.marks.load)


class PhaseLabelCheck(Check):
    """Before the register call returned the label decides (see harness.oracle.trace); after
    it, a notify can only be a hot-add."""

    def record(self, ctx: Context, r: Record, where: Section | None) -> Iterator[Hit]:
        if not isinstance(r, NotifyRecord) or ctx.marks.in_window:
            return
        if r.phase is not Phase.HOTADD:
            yield _hit("phase.label", f"{_nt(r)} says phase {r.phase.value} but arrived after "
                       "the register call returned", r)


class RegistrationWindowCheck(Check):
    """A hot-add inside the registration window is judged as a hot-add; one that falls
    between the replay's first and last record would mean the replay did not exclude it.
    Kept: the first replay record, and the count and first of the window hot-adds since the
    latest replay record (they are inside once another replay record follows)."""

    def __init__(self) -> None:
        self.first_replay: NotifyRecord | None = None
        self.pending = 0
        self.first_pending: NotifyRecord | None = None
        self.inside = 0
        self.first_inside: NotifyRecord | None = None

    def record(self, ctx: Context, r: Record, where: Section | None) -> Iterator[Hit]:
        if not isinstance(r, NotifyRecord) or not ctx.marks.in_window:
            return iter(())
        if where is Section.HOTADD:
            if self.first_replay is not None:
                self.pending += 1
                self.first_pending = self.first_pending or r
        elif self.first_replay is None:
            self.first_replay = r
        elif self.pending:
            self.inside += self.pending
            self.first_inside = self.first_inside or self.first_pending
            self.pending, self.first_pending = 0, None
        return iter(())

    def finish(self, ctx: Context) -> Iterator[Hit]:
        if self.inside and self.first_inside is not None:
            yield _hit("replay.not_interleaved", f"{self.inside} hot-add notification(s) "
                       f"(first: {_nt(self.first_inside)}) arrived between the replay's first "
                       "and last record", self.first_replay, self.first_inside)


class ReplayCheck(Check):
    """The replay as a whole (its rules compare all of it): judged once the trace ended."""

    def finish(self, ctx: Context) -> Iterator[Hit]:
        marks, replay = ctx.marks, ctx.replay
        if ctx.replay_beyond:
            yield _hit("replay.starts", f"{MAX_REPLAY + ctx.replay_beyond} notify records "
                       f"inside the register call, more than any machine has processors for; "
                       f"only the first {MAX_REPLAY} are judged", replay[-1])
        if not replay:
            # A failed register call may have refused before any replay (the probe refuses
            # unknown Flags bits itself): only a successful one must have replayed.
            if (marks.add_existing and marks.boot_count and marks.registration is not None
                    and marks.registration.event is DriverEvent.REGISTERED):
                yield _hit("replay.starts", f"ADD_EXISTING was passed but none of the "
                           f"{marks.boot_count} active processors got Start", marks.registration)
            return
        if not marks.add_existing:
            yield _hit("replay.none_without_flag", f"{len(replay)} notify record(s) inside a "
                       "register call made without ADD_EXISTING", replay[0])
            return
        yield from _replay_count(ctx)
        starts = _of(replay, NotifyState.START)
        closes = [r for r in replay if r.state is not NotifyState.START]
        yield from _replay_starts(ctx, starts, closes)
        veto = ctx.replay_veto
        yield from (_replay_after_veto(ctx, starts, closes, veto) if veto is not None
                    else _replay_completes(starts, closes))


def _replay_count(ctx: Context) -> Iterator[Hit]:
    load, first, ceiling = ctx.marks.boot_count, ctx.first_replay, ctx.replay_ceiling
    if load is None or first is None or ceiling is None:
        return
    seen = first.active_count
    if seen < load:
        yield _hit("replay.active_at_registration", f"the replay ran with {seen} active "
                   f"processor(s), fewer than the {load} the load record counted",
                   ctx.marks.load, first)
    elif seen > ceiling:
        flight = ctx.adds_during_load
        yield _hit("replay.active_at_registration", f"the replay ran with {seen} active "
                   f"processor(s); the load record counted {load}"
                   + (f" and only {flight} add(s) were in flight during the load, so at most "
                      f"{ceiling}" if flight else " and no add was in flight during the load")
                   + ": judged against the load count", ctx.marks.load, first)


def _replay_starts(ctx: Context, starts: list[NotifyRecord],
                   closes: list[NotifyRecord]) -> Iterator[Hit]:
    marks = ctx.marks
    count = ctx.active_at_registration
    seen: dict[int, NotifyRecord] = {}
    for start in starts:
        if start.nt_number in seen:
            yield _hit("replay.starts", f"processor {start.nt_number} got Start twice",
                       seen[start.nt_number], start)
        elif count is not None and start.nt_number >= count:
            yield _hit("replay.starts", f"Start for nt {start.nt_number}, but only {count} "
                       "processors were active when the replay ran", start)
        seen.setdefault(start.nt_number, start)
    if ctx.replay_veto is None and count is not None and len(seen) < count:
        # count comes from the file (up to 2**32): never build range(count)
        missing = sum(1 for n in seen if n < count)
        first = list(islice((n for n in range(count) if n not in seen), 16))
        shown = f"{first}{' ...' if count - missing > 16 else ''}"
        yield _hit("replay.starts", f"no replay Start for processor(s) {shown}",
                   marks.registration or marks.load)
    if closes:
        first_close = next(i for i, r in enumerate(ctx.replay) if r is closes[0])
        late = _of(ctx.replay[first_close:], NotifyState.START)
        if late:
            yield _hit("replay.starts", f"Start for nt {late[0].nt_number} after the first "
                       f"{closes[0].state.value}: not all Starts came first", closes[0], late[0])
    for index, start in enumerate(starts):
        if start.nt_number != index:
            yield _hit("replay.ascending", f"replay Start #{index} is for nt "
                       f"{start.nt_number}, not {index}", start)
            break


def _replay_completes(starts: list[NotifyRecord], closes: list[NotifyRecord]) -> Iterator[Hit]:
    completes = _of(closes, NotifyState.COMPLETE)
    for failure in _of(closes, NotifyState.FAILURE):
        yield _hit("replay.completes", f"Failure for nt {failure.nt_number} although no "
                   "replay Start was vetoed", failure)
    started = Counter(s.nt_number for s in starts)
    got = Counter(c.nt_number for c in completes)
    if sorted(got.elements()) != sorted(started):
        extra = sorted(n for n in got if got[n] > started[n])
        missing = sorted(n for n in started if n not in got)
        offenders = ([s for s in starts if s.nt_number in set(missing)]
                     + [c for c in completes if c.nt_number in set(extra)])
        yield _hit("replay.completes", f"replay Completes do not match the Starts: no Complete "
                   f"for {missing[:16]}, unexpected or repeated {extra[:16]}", *offenders[:4])
    for index, complete in enumerate(completes):
        if complete.nt_number != index:
            yield _hit("replay.ascending", f"replay Complete #{index} is for nt "
                       f"{complete.nt_number}, not {index}", complete)
            break


def _replay_after_veto(ctx: Context, starts: list[NotifyRecord], closes: list[NotifyRecord],
                       veto: NotifyRecord) -> Iterator[Hit]:
    at = next(i for i, s in enumerate(starts) if s is veto)
    earlier, later = starts[:at], starts[at + 1:]
    if later:
        yield _hit("replay.veto_stops", f"{len(later)} replay Start(s) after the veto of nt "
                   f"{veto.nt_number}", veto, *later[:2])
    for complete in _of(closes, NotifyState.COMPLETE):
        yield _hit("replay.veto_failures", f"Complete for nt {complete.nt_number} in a "
                   "vetoed replay", complete)
    failures = _of(closes, NotifyState.FAILURE)
    expected = sorted({s.nt_number for s in earlier})
    got = sorted(f.nt_number for f in failures)
    if got != expected:
        yield _hit("replay.veto_failures", f"after the veto of nt {veto.nt_number} Failures "
                   f"went to {got[:16]}, expected {expected[:16]}", veto, *failures[:2])
    registration = ctx.marks.registration
    if registration is not None and registration.event is DriverEvent.REGISTERED:
        yield _hit("replay.veto_register_failed", "the register call succeeded although the "
                   f"replay Start of nt {veto.nt_number} was vetoed", veto, registration)


class HotaddCheck(Check):
    def orphan(self, ctx: Context, r: NotifyRecord, where: Section) -> Iterator[Hit]:
        if where is Section.HOTADD:
            yield _hit("hotadd.pair", f"{_nt(r)} without an open Start", r)

    def episode(self, ctx: Context, ep: Episode, where: Section) -> Iterator[Hit]:
        if where is not Section.HOTADD:
            return
        start, close = ep.start, ep.close
        if ep.vetoed:
            if close is None:
                yield _hit("hotadd.veto_failure", f"the vetoed Start for nt {start.nt_number} "
                           "was never closed by Failure", start)
            elif close.state is NotifyState.COMPLETE:
                yield _hit("hotadd.veto_honoured", f"nt {start.nt_number} completed although "
                           f"its Start was vetoed with 0x{start.op_status:08X}", start, close)
            elif close.status != start.op_status:
                yield _hit("hotadd.veto_failure", f"Failure for nt {start.nt_number} carries "
                           f"0x{close.status:08X}, the veto was 0x{start.op_status:08X}",
                           start, close)
        elif ep.restarted:
            yield _hit("hotadd.pair", f"nt {start.nt_number} got a second Start before this "
                       "one was closed", start)
        elif close is None:
            yield _hit("hotadd.pair", f"the Start for nt {start.nt_number} was never closed",
                       start)
        if close is not None and ep.inside is not None:
            yield _hit("hotadd.serialized", f"Start for nt {ep.inside.nt_number} arrived "
                       f"while nt {start.nt_number}'s add was still open", start, ep.inside)


class StatusCheck(Check):
    def record(self, ctx: Context, r: Record, where: Section | None) -> Iterator[Hit]:
        if not isinstance(r, NotifyRecord):
            return
        if r.state is NotifyState.FAILURE:
            if nt_success(r.status):
                yield _hit("status.failure_error", f"Failure for nt {r.nt_number} carries success "
                           f"status 0x{r.status:08X}", r)
        elif r.status != 0:
            yield _hit("status.success_zero", f"{_nt(r)} carries status 0x{r.status:08X}, not 0", r)
        if r.op_status_in:
            yield _hit("op_status.found_on_entry", f"{_nt(r)} found *OperationStatus = "
                       f"0x{r.op_status_in:08X} on entry: left by the kernel or another driver, "
                       "not the probe's write (that is op_status)", r)
        if r.op_status != 0 and r.state is not NotifyState.START:
            yield _hit("op_status.only_on_start", f"{_nt(r)} set *OperationStatus to "
                       f"0x{r.op_status:08X}", r)
        elif r.op_status != 0 and nt_success(r.op_status):
            yield _hit("op_status.only_on_start", f"Start for nt {r.nt_number} set "
                       f"*OperationStatus to a success code 0x{r.op_status:08X}", r)


class IndexCheck(Check):
    """Each hot-add Start against the indices taken when it arrived: the boot processors
    (0..boot-1, never materialised: the load record may claim 2**32), completed hot-adds, and
    adds still in flight (Windows hands the index out at Start).

    The lowest free index is a pointer below which every index is taken but for `holes` (a
    heap of indices given back by adds that did not complete): O(log n) per Start, however
    the adds interleave. At most MAX_PROCESSORS hot-added processors are tracked."""

    def __init__(self) -> None:
        self.boot: int | None = None
        self.added: set[int] = set()  # completed hot-adds
        self.in_flight: dict[int, NotifyRecord] = {}
        self.holes: list[int] = []
        self.lowest = 0

    def _boot(self, ctx: Context) -> int:
        if self.boot is None:
            self.boot = self.lowest = ctx.active_at_registration or 0
        return self.boot

    def _active(self, nt: int) -> bool:
        return nt < (self.boot or 0) or nt in self.added

    def _taken(self, nt: int) -> bool:
        return self._active(nt) or nt in self.in_flight

    def _first_free(self) -> int:
        while self.holes and self._taken(self.holes[0]):
            heapq.heappop(self.holes)
        if self.holes:
            return self.holes[0]
        while self._taken(self.lowest):
            self.lowest += 1
        return self.lowest

    def record(self, ctx: Context, r: Record, where: Section | None) -> Iterator[Hit]:
        if where is not Section.HOTADD or not isinstance(r, NotifyRecord) or (
                r.state is not NotifyState.START):
            return
        self._boot(ctx)
        nt = r.nt_number
        if len(self.added) + len(self.in_flight) >= MAX_PROCESSORS and not self._taken(nt):
            return  # past the cap (ProcessorNumberCheck says so): not tracked
        if self._active(nt):
            self.in_flight[nt] = r
            load = ctx.marks.boot_count
            twice = (" (the replay had it: an add seen twice)"
                     if load is not None and load <= nt < (self.boot or 0) else "")
            yield _hit("index.unused", f"hot-add Start for nt {nt}, which is already "
                       f"active{twice}", r)
            return
        free = self._first_free()
        if nt in self.in_flight and nt < free:  # its own earlier Start, cut short: free again
            free = nt
        self.in_flight[nt] = r
        if nt != free:
            yield _hit("index.next_free", f"hot-added processor got nt {nt}, "
                       f"the next free one is {free}", r)

    def episode(self, ctx: Context, ep: Episode, where: Section) -> Iterator[Hit]:
        if where is not Section.HOTADD:
            return iter(())
        nt = ep.start.nt_number
        self._boot(ctx)
        if self.in_flight.get(nt) is ep.start:
            del self.in_flight[nt]
            if ep.close is not None and ep.close.state is NotifyState.COMPLETE:
                self.added.add(nt)
            elif not self._active(nt) and nt < self.lowest:
                heapq.heappush(self.holes, nt)
        return iter(())


class ProcessorNumberCheck(Check):
    """One entry per processor (not per record): the first record of each nt and pair."""

    def __init__(self) -> None:
        self.by_nt: dict[int, NotifyRecord] = {}
        self.by_pair: dict[tuple[int, int], NotifyRecord] = {}
        self.full = False  # MAX_PROCESSORS reached

    def record(self, ctx: Context, r: Record, where: Section | None) -> Iterator[Hit]:
        if not isinstance(r, NotifyRecord) or where is Section.AFTER_END:
            return
        pair = (r.group, r.number)
        if r.nt_number not in self.by_nt and len(self.by_nt) >= MAX_PROCESSORS:
            if not self.full:
                self.full = True
                yield _hit("procnum.consistent", f"more than {MAX_PROCESSORS} distinct "
                           "processors, more than any machine has: later ones are not checked "
                           "against the others", r)
            return
        first = self.by_nt.setdefault(r.nt_number, r)
        owner = self.by_pair.setdefault(pair, r)
        if r.number >= 64 and ctx.profile is Profile.WINDOWS:
            yield _hit("procnum.consistent", f"nt {r.nt_number} has number {r.number}: a group "
                       "holds at most 64 processors", r)
        if (first.group, first.number) != pair:
            yield _hit("procnum.consistent", f"nt {r.nt_number} is {r.group}:{r.number} here "
                       f"but {first.group}:{first.number} before", first, r)
        elif owner.nt_number != r.nt_number:
            yield _hit("procnum.consistent", f"nt {r.nt_number} and nt {owner.nt_number} both "
                       f"claim {r.group}:{r.number}", owner, r)


class IndexMappingCheck(Check):
    """The Windows probe's map_* fields: what KeGetProcessorNumberFromIndex(nt_number) said in
    the callback (driver/README.md). Records without them (the Linux probe) are not judged."""

    def record(self, ctx: Context, r: Record, where: Section | None) -> Iterator[Hit]:
        if not isinstance(r, NotifyRecord) or where is Section.AFTER_END:
            return
        status = r.extra.get("map_status")
        if status is None:
            return
        in_start = where is Section.HOTADD and r.state is NotifyState.START
        rule = "procnum.index_during_start" if in_start else "procnum.matches_index"
        if status != 0:
            # an extra field: any JSON value, shown as it is when it is not an NTSTATUS
            shown = f"0x{status:08X}" if type(status) is int else json.dumps(status)[:80]
            yield _hit(rule, f"{_nt(r)}: KeGetProcessorNumberFromIndex({r.nt_number}) failed "
                       f"with {shown}", r)
            return
        mapped = (r.extra.get("map_group"), r.extra.get("map_number"))
        if mapped != (r.group, r.number):
            yield _hit(rule, f"{_nt(r)} is {r.group}:{r.number}, but KeGetProcessorNumberFromIndex"
                       f"({r.nt_number}) gives {mapped[0]}:{mapped[1]}", r)


class CountCheck(Check):
    """In file order: a hot-add in the registration window may come before replay records."""

    def __init__(self) -> None:
        self.started = False
        self.previous: Record | None = None
        self.last: int | None = None
        self.completed = 0
        self.registered: tuple[int | None] | None = None  # active_at_registration, once known

    def record(self, ctx: Context, r: Record, where: Section | None) -> Iterator[Hit]:
        if not isinstance(r, NotifyRecord) or where is Section.AFTER_END:
            return
        boot = ctx.marks.boot_count
        if not self.started:
            self.started, self.previous, self.last = True, ctx.marks.load, boot
        if ctx.first_replay is not None:  # from the replay on: what it ran with
            if self.registered is None:  # fixed once the replay began: computed once
                self.registered = (ctx.active_at_registration,)
            boot = self.registered[0]
        if self.last is not None and r.active_count < self.last:
            yield _hit("count.never_decreases", f"active_count drops from {self.last} to "
                       f"{r.active_count}", self.previous, r)
        self.last, self.previous = r.active_count, r
        if boot is None:
            return
        self.completed += where is Section.HOTADD and r.state is NotifyState.COMPLETE
        want = boot + self.completed
        if r.active_count != want:
            yield _hit("count.grows", f"{_nt(r)} saw active_count {r.active_count}, expected "
                       f"{want} ({boot} at registration + {self.completed} hot-add "
                       "Complete(s) so far)", r)


class LevelCheck(Check):
    def record(self, ctx: Context, r: Record, where: Section | None) -> Iterator[Hit]:
        if not isinstance(r, NotifyRecord):
            return
        if ctx.profile is Profile.LINUX:
            if r.irql != 0 or r.group != 0:
                yield _hit("linux.fixed_fields", f"{_nt(r)} has irql {r.irql}, group "
                           f"{r.group}: the Linux probe always writes 0", r)
            return
        ceiling, name = ((APC_LEVEL, "APC_LEVEL") if where is Section.REPLAY
                         else (0, "PASSIVE_LEVEL"))
        if where is not Section.AFTER_END and r.irql > ceiling:
            yield _hit("irql.level", f"{_nt(r)} ran at IRQL {r.irql}, above {name}", r)


class AfterEndCheck(Check):
    def record(self, ctx: Context, r: Record, where: Section | None) -> Iterator[Hit]:
        if where is Section.AFTER_END and isinstance(r, NotifyRecord):
            yield _hit("notify.after_end", f"{_nt(r)} after {ctx.marks.end.event.value}"
                       if ctx.marks.end else _nt(r), ctx.marks.end, r)


class HostCheck(Check):
    """Counts of hot-add Starts and Completes, against what the host saw."""

    def __init__(self) -> None:
        self.starts = 0
        self.completes = 0
        self.first_start: NotifyRecord | None = None
        self.first_complete: NotifyRecord | None = None
        self.last_complete: NotifyRecord | None = None

    def record(self, ctx: Context, r: Record, where: Section | None) -> Iterator[Hit]:
        if where is not Section.HOTADD or not isinstance(r, NotifyRecord):
            return
        if r.state is NotifyState.START:
            self.starts += 1
            self.first_start = self.first_start or r
        elif r.state is NotifyState.COMPLETE:
            self.completes += 1
            self.first_complete = self.first_complete or r
            self.last_complete = r
        return
        yield  # a generator, like every hook

    def finish(self, ctx: Context) -> Iterator[Hit]:
        host, marks = ctx.host, ctx.marks
        if host is None:
            return
        covered = ctx.replay_covered  # adds seen in the replay (--load-during-adds)
        also = f" + {covered} in the replay" if covered else ""
        if host.adds_performed is not None and self.starts + covered != host.adds_performed:
            yield _hit("host.adds", f"{self.starts} hot-add Start(s){also} for "
                       f"{host.adds_performed} vCPU add(s) on the host", self.first_start)
        if host.adds_expected_ok is not None and (
                self.completes + covered != host.adds_expected_ok):
            yield _hit("host.completes", f"{self.completes} hot-add Complete(s){also}, the "
                       f"host expected {host.adds_expected_ok}", self.first_complete)
        boot = marks.boot_count
        if host.boot_cpus is not None and boot is not None and not (
                host.boot_cpus <= boot <= host.boot_cpus + host.adds_during_load):
            flight = (f" (+ up to {host.adds_during_load} in flight during the load)"
                      if host.adds_during_load else "")
            yield _hit("host.boot_count", f"the probe saw {boot} active processor(s) at load, "
                       f"the guest booted with {host.boot_cpus}{flight}", marks.load)
        if host.guest_count is not None:
            base = ctx.boot_base
            if base is not None and base + covered + self.completes != host.guest_count:
                total = base + covered + self.completes
                yield _hit("host.final_count", f"{base} boot{also} + {self.completes} "
                           f"added = {total}, but the guest reports {host.guest_count}",
                           self.last_complete)


#: The checks, in reporting order (ties in seq keep this order). Each run gets fresh instances.
CHECKS: tuple[type[Check], ...] = (
    SequenceCheck, LossCheck, DriverCheck, PhaseLabelCheck, RegistrationWindowCheck,
    ReplayCheck, HotaddCheck, StatusCheck, IndexCheck, ProcessorNumberCheck, IndexMappingCheck,
    CountCheck, LevelCheck, AfterEndCheck, HostCheck,
)

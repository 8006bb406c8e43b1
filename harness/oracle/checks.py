"""The trace checks. Each yields `Hit`s naming the rule it breaks; severity is not decided here.

One function per concern, each reading the `Trace` landmarks. The facts behind every rule are
in `harness.oracle.rules` and `docs/processor-change-semantics.md`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise

from harness.oracle.host import HostFacts
from harness.oracle.rules import Profile
from harness.oracle.trace import Trace, pair_up
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


@dataclass(frozen=True)
class Context:
    trace: Trace
    profile: Profile
    host: HostFacts | None


Check = Callable[[Context], Iterator[Hit]]


def _hit(rule_id: str, message: str, *records: Record | None) -> Hit:
    return Hit(rule_id, message, tuple(r.seq for r in records if r is not None))


def _nt(record: NotifyRecord) -> str:
    return f"{record.state.value} for nt {record.nt_number}"


def _of(records: Sequence[NotifyRecord], state: NotifyState) -> list[NotifyRecord]:
    return [r for r in records if r.state is state]


def check_sequence(ctx: Context) -> Iterator[Hit]:
    records = ctx.trace.records
    if not records:
        yield Hit("seq.first_load", "the trace is empty: the probe never wrote its load record",
                  ())
        return
    first = records[0]
    if not (isinstance(first, DriverRecord) and first.event is DriverEvent.LOAD):
        yield _hit("seq.first_load", "the first record is not the driver's load", first)
    if first.seq != 1:
        yield _hit("seq.complete", f"the first record has seq {first.seq}, not 1", first)
    for prev, cur in pairwise(records):
        if cur.seq == prev.seq + 1:
            pass
        elif cur.seq > prev.seq:
            yield _hit("seq.complete", f"seq jumps from {prev.seq} to {cur.seq}: "
                       f"{cur.seq - prev.seq - 1} record(s) missing", prev, cur)
        else:
            yield _hit("seq.complete", f"seq {cur.seq} follows seq {prev.seq}: a record is "
                       "repeated or out of order", prev, cur)
        if cur.t_ns < prev.t_ns:
            yield _hit("time.monotonic", f"t_ns goes back {prev.t_ns - cur.t_ns} ns", prev, cur)


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
RING_SIZE_FIX = ("raise HAP_RING_CAPACITY in driver/probe_public.h (driver/README.md, "
                 "\"The dropped event\"), rebuild the driver and run again")


def check_losses(ctx: Context) -> Iterator[Hit]:
    """A `dropped` line takes its own seq, so the loss is no seq gap: it is reported here."""
    dropped = ctx.trace.dropped
    total = sum(r.count or 0 for r in dropped)
    in_all = f" ({total} in all, in {len(dropped)} places)" if len(dropped) > 1 else ""
    for record in dropped:
        yield _hit("records.none_dropped", f"the probe lost {record.count} record(s) just "
                   f"before this point{in_all}: its record ring was full, so the trace is "
                   "incomplete and other findings may be consequences of the loss; fix: "
                   f"{RING_SIZE_FIX}", record)


def check_driver(ctx: Context) -> Iterator[Hit]:
    state: DriverEvent | None = None
    unload: DriverRecord | None = None
    for record in ctx.trace.records:
        if isinstance(record, DriverRecord) and record.event is DriverEvent.DROPPED:
            # A loss report, not a life-cycle step (records.none_dropped judges it): after
            # load it may come anywhere, last included (the final flush's report).
            if state is None:
                yield _hit("driver.order", "dropped before load", record)
            continue
        if unload is not None and isinstance(record, DriverRecord):
            yield _hit("driver.order", f"{record.event.value} after unload", unload, record)
            continue
        if not isinstance(record, DriverRecord):
            continue
        if record.event not in _NEXT_EVENT[state]:
            after = f"after {state.value}" if state else "before load"
            yield _hit("driver.order", f"{record.event.value} {after}", record)
        if record.event is DriverEvent.UNLOAD:
            unload = record
            if state is DriverEvent.REGISTERED:
                yield _hit("driver.deregister_before_unload",
                           "unload while the callback is still registered", record)
        if record.event is DriverEvent.REGISTER_FAILED and nt_success(record.status or 0):
            yield _hit("driver.register_failed_status",
                       f"register_failed with success status 0x{record.status or 0:08X}", record)
        state = record.event
    if state is DriverEvent.LOAD:
        yield _hit("driver.order", "the trace ends before the register call returned",
                   ctx.trace.load)


def check_phase_labels(ctx: Context) -> Iterator[Hit]:
    """Before the register call returned the label decides (see harness.oracle.trace); after
    it, a notify can only be a hot-add."""
    trace = ctx.trace
    for record in (*trace.hotadd, *trace.after_end):
        if record.phase is not Phase.HOTADD:
            yield _hit("phase.label", f"{_nt(record)} says phase {record.phase.value} but "
                       "arrived after the register call returned", record)


def check_registration_window(ctx: Context) -> Iterator[Hit]:
    """A hot-add inside the registration window is judged as a hot-add; one that falls
    between the replay's first and last record would mean the replay did not exclude it."""
    trace = ctx.trace
    if not trace.replay or not trace.window_hotadd:
        return
    position = {id(r): i for i, r in enumerate(trace.records)}
    first, last = position[id(trace.replay[0])], position[id(trace.replay[-1])]
    inside = [r for r in trace.window_hotadd if first < position[id(r)] < last]
    if inside:
        yield _hit("replay.not_interleaved", f"{len(inside)} hot-add notification(s) (first: "
                   f"{_nt(inside[0])}) arrived between the replay's first and last record",
                   trace.replay[0], inside[0])


def check_replay(ctx: Context) -> Iterator[Hit]:
    trace = ctx.trace
    if not trace.replay:
        # A failed register call may have refused before any replay (the probe refuses
        # unknown Flags bits itself): only a successful one must have replayed.
        if (trace.add_existing and trace.boot_count and trace.registration is not None
                and trace.registration.event is DriverEvent.REGISTERED):
            yield _hit("replay.starts", f"ADD_EXISTING was passed but none of the "
                       f"{trace.boot_count} active processors got Start", trace.registration)
        return
    if not trace.add_existing:
        yield _hit("replay.none_without_flag", f"{len(trace.replay)} notify record(s) inside a "
                   "register call made without ADD_EXISTING", *trace.replay[:1])
        return
    starts = _of(trace.replay, NotifyState.START)
    closes = [r for r in trace.replay if r.state is not NotifyState.START]
    yield from _replay_starts(ctx, starts, closes)
    veto = trace.replay_veto
    yield from (_replay_after_veto(ctx, starts, closes, veto) if veto is not None
                else _replay_completes(starts, closes))


def _replay_starts(ctx: Context, starts: list[NotifyRecord],
                   closes: list[NotifyRecord]) -> Iterator[Hit]:
    trace = ctx.trace
    count = trace.boot_count
    seen: dict[int, NotifyRecord] = {}
    for start in starts:
        if start.nt_number in seen:
            yield _hit("replay.starts", f"processor {start.nt_number} got Start twice",
                       seen[start.nt_number], start)
        elif count is not None and start.nt_number >= count:
            yield _hit("replay.starts", f"Start for nt {start.nt_number}, but only {count} "
                       "processors were active at load", start)
        seen.setdefault(start.nt_number, start)
    if trace.replay_veto is None and count is not None and len(seen) < count:
        missing = sorted(set(range(count)) - set(seen))
        yield _hit("replay.starts", f"no replay Start for processor(s) {missing}",
                   trace.registration or trace.load)
    if closes:
        first_close = next(i for i, r in enumerate(trace.replay) if r is closes[0])
        late = _of(trace.replay[first_close:], NotifyState.START)
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
    started = [s.nt_number for s in starts]
    got = [c.nt_number for c in completes]
    if sorted(got) != sorted(set(started)):
        extra = sorted(n for n in set(got) if got.count(n) > started.count(n))
        missing = sorted(n for n in set(started) if n not in got)
        offenders = ([s for s in starts if s.nt_number in missing]
                     + [c for c in completes if c.nt_number in extra])
        yield _hit("replay.completes", f"replay Completes do not match the Starts: no Complete "
                   f"for {missing}, unexpected or repeated {extra}", *offenders[:4])
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
                   f"went to {got}, expected {expected}", veto, *failures[:2])
    registration = ctx.trace.registration
    if registration is not None and registration.event is DriverEvent.REGISTERED:
        yield _hit("replay.veto_register_failed", "the register call succeeded although the "
                   f"replay Start of nt {veto.nt_number} was vetoed", veto, registration)


def check_hotadds(ctx: Context) -> Iterator[Hit]:
    pairing = pair_up(ctx.trace.hotadd)
    for orphan in pairing.orphans:
        yield _hit("hotadd.pair", f"{_nt(orphan)} without an open Start", orphan)
    for ep in pairing.episodes:
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
        if close is not None:
            inside = [r for r in ctx.trace.hotadd[ep.start_at + 1:ep.close_at]
                      if r.state is NotifyState.START]
            if inside:
                yield _hit("hotadd.serialized", f"Start for nt {inside[0].nt_number} arrived "
                           f"while nt {start.nt_number}'s add was still open", start, inside[0])


def check_statuses(ctx: Context) -> Iterator[Hit]:
    for r in (*ctx.trace.replay, *ctx.trace.hotadd, *ctx.trace.after_end):
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


def check_indices(ctx: Context) -> Iterator[Hit]:
    trace = ctx.trace
    active = set(range(trace.boot_count or 0))
    for ep in pair_up(trace.hotadd).episodes:
        start = ep.start
        if start.nt_number in active:
            yield _hit("index.unused", f"hot-add Start for nt {start.nt_number}, which is "
                       "already active", start)
        else:
            lowest = min(set(range(len(active) + 1)) - active)
            if start.nt_number != lowest:
                yield _hit("index.next_free", f"hot-added processor got nt {start.nt_number}, "
                           f"the next free one is {lowest}", start)
        if ep.close is not None and ep.close.state is NotifyState.COMPLETE:
            active.add(start.nt_number)


def check_processor_numbers(ctx: Context) -> Iterator[Hit]:
    by_nt: dict[int, NotifyRecord] = {}
    by_pair: dict[tuple[int, int], NotifyRecord] = {}
    for r in (*ctx.trace.replay, *ctx.trace.hotadd):
        pair = (r.group, r.number)
        first = by_nt.setdefault(r.nt_number, r)
        owner = by_pair.setdefault(pair, r)
        if r.number >= 64 and ctx.profile is Profile.WINDOWS:
            yield _hit("procnum.consistent", f"nt {r.nt_number} has number {r.number}: a group "
                       "holds at most 64 processors", r)
        if (first.group, first.number) != pair:
            yield _hit("procnum.consistent", f"nt {r.nt_number} is {r.group}:{r.number} here "
                       f"but {first.group}:{first.number} before", first, r)
        elif owner.nt_number != r.nt_number:
            yield _hit("procnum.consistent", f"nt {r.nt_number} and nt {owner.nt_number} both "
                       f"claim {r.group}:{r.number}", owner, r)


def check_counts(ctx: Context) -> Iterator[Hit]:
    trace = ctx.trace
    previous: Record | None = trace.load
    last = trace.boot_count
    completed = 0
    hotadds = {id(r) for r in trace.hotadd}
    judged = hotadds | {id(r) for r in trace.replay}
    # File order: a hot-add in the registration window may come before replay records.
    in_order = [(r, id(r) in hotadds and r.state is NotifyState.COMPLETE)
                for r in trace.records if isinstance(r, NotifyRecord) and id(r) in judged]
    for r, is_complete in in_order:
        if last is not None and r.active_count < last:
            yield _hit("count.never_decreases", f"active_count drops from {last} to "
                       f"{r.active_count}", previous, r)
        last, previous = r.active_count, r
        if trace.boot_count is None:
            continue
        completed += is_complete
        want = trace.boot_count + completed
        if r.active_count != want:
            yield _hit("count.grows", f"{_nt(r)} saw active_count {r.active_count}, expected "
                       f"{want} (load count {trace.boot_count} + {completed} hot-add "
                       "Complete(s) so far)", r)


def check_levels(ctx: Context) -> Iterator[Hit]:
    trace = ctx.trace
    if ctx.profile is Profile.LINUX:
        for r in (*trace.replay, *trace.hotadd, *trace.after_end):
            if r.irql != 0 or r.group != 0:
                yield _hit("linux.fixed_fields", f"{_nt(r)} has irql {r.irql}, group "
                           f"{r.group}: the Linux probe always writes 0", r)
        return
    for records, ceiling, name in ((trace.replay, APC_LEVEL, "APC_LEVEL"),
                                   (trace.hotadd, 0, "PASSIVE_LEVEL")):
        for r in records:
            if r.irql > ceiling:
                yield _hit("irql.level", f"{_nt(r)} ran at IRQL {r.irql}, above {name}", r)


def check_after_end(ctx: Context) -> Iterator[Hit]:
    end = ctx.trace.end
    for r in ctx.trace.after_end:
        assert end is not None
        yield _hit("notify.after_end", f"{_nt(r)} after {end.event.value}", end, r)


def check_host(ctx: Context) -> Iterator[Hit]:
    host = ctx.host
    if host is None:
        return
    trace = ctx.trace
    starts = _of(trace.hotadd, NotifyState.START)
    completes = _of(trace.hotadd, NotifyState.COMPLETE)
    if host.adds_performed is not None and len(starts) != host.adds_performed:
        yield _hit("host.adds", f"{len(starts)} hot-add Start(s) for {host.adds_performed} "
                   "vCPU add(s) on the host", *starts[:1])
    if host.adds_expected_ok is not None and len(completes) != host.adds_expected_ok:
        yield _hit("host.completes", f"{len(completes)} hot-add Complete(s), the host expected "
                   f"{host.adds_expected_ok}", *completes[:1])
    if host.boot_cpus is not None and trace.load is not None and (
            trace.boot_count != host.boot_cpus):
        yield _hit("host.boot_count", f"the probe saw {trace.boot_count} active processor(s) "
                   f"at load, the guest booted with {host.boot_cpus}", trace.load)
    if host.guest_count is not None:
        base = host.boot_cpus if host.boot_cpus is not None else trace.boot_count
        if base is not None and base + len(completes) != host.guest_count:
            yield _hit("host.final_count", f"{base} boot + {len(completes)} added = "
                       f"{base + len(completes)}, but the guest reports {host.guest_count}",
                       *completes[-1:])


CHECKS: tuple[Check, ...] = (
    check_sequence, check_losses, check_driver, check_phase_labels, check_registration_window,
    check_replay, check_hotadds,
    check_statuses, check_indices, check_processor_numbers, check_counts, check_levels,
    check_after_end, check_host,
)

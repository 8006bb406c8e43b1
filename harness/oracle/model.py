"""A model of the processor-change protocol that writes the records a correct probe would.

Used to generate valid traces for the oracle's property tests, for the KMDF driver's formatter
tests (feed a modelled run through the C formatter, then into `check`), and for the reference
guest's tests (profile linux). Every trace it produces passes `check` with no finding at all,
except that `veto_failure_delivered=False` yields the `hotadd.veto_failure` warning the
Windows profile gives when the vetoing driver is not told of the Failure (an open question).

    model = ProtocolModel(existing=2, hotadds=(HotAdd(), HotAdd(veto=STATUS_UNSUCCESSFUL)))
    records = model.records()
    verdict = check(records, Profile.WINDOWS, model.host_facts())
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from harness.errors import InputError
from harness.oracle.host import HostFacts
from harness.oracle.rules import Profile
from harness.records import (
    ADD_EXISTING,
    DriverEvent,
    DriverRecord,
    NotifyRecord,
    NotifyState,
    Phase,
    Record,
    nt_success,
)

STATUS_UNSUCCESSFUL = 0xC000_0001
STATUS_INSUFFICIENT_RESOURCES = 0xC000_009A
ENOMEM_AS_STATUS = 0xFFFF_FFF4  # -ENOMEM as unsigned 32-bit: how the Linux probe writes a veto
APC_LEVEL = 1


def _require(ok: bool, problem: str) -> None:
    if not ok:
        raise InputError(f"impossible protocol model: {problem}",
                         "change the ProtocolModel arguments (see its docstring)")


@dataclass(frozen=True)
class HotAdd:
    """One vCPU hot-add as the probe sees it.

    veto: the status the probe leaves in *OperationStatus during Start (0: no veto).
    failure: the Status of a Failure caused elsewhere (another driver vetoed, the processor did
      not start); 0 means the add completes. At most one of the two is non-zero.
    latency_ns: time from Start to Complete/Failure.
    """

    veto: int = 0
    failure: int = 0
    latency_ns: int = 5_000_000

    def __post_init__(self) -> None:
        _require(not (self.veto and self.failure), "a hot-add is vetoed or fails, not both")
        for name, value in (("veto", self.veto), ("failure", self.failure)):
            _require(value == 0 or not nt_success(value),
                     f"HotAdd.{name} = 0x{value:08X} is not an error status")
        _require(self.latency_ns >= 0, "HotAdd.latency_ns must not be negative")

    @property
    def completes(self) -> bool:
        return not (self.veto or self.failure)


@dataclass(frozen=True)
class ProtocolModel:
    """A probe's life: load with `existing` processors, register, hot-adds, deregister, unload.

    add_existing: pass KE_PROCESSOR_CHANGE_ADD_EXISTING (the Linux probe's flags=1).
    replay_veto_at: veto the replay Start of processor k (registration then fails; no hot-adds).
    veto_failure_delivered: Windows only; whether a vetoing driver gets the Failure (open).
    replay_irql: Windows only; IRQL of replay callbacks (APC_LEVEL is what re says happens).
    group_size: processors per group for (group, number) (Windows: up to 64).
    hotadds_in_window: how many of the hot-adds land in the registration window: after the
      replay, on another thread, before the register call returned (so before `registered`).
    adds_during_load: how many of the hot-adds the host had started when the probe loaded
      (`hotadd run --load-during-adds`; HostFacts.adds_during_load).
    replayed_adds: of those, how many came online between the load record and the register
      call: the first ones, replayed with the `existing` processors (the load record still
      counts `existing`), never notified as hot-adds.
    """

    existing: int = 1
    add_existing: bool = True
    replay_veto_at: int | None = None
    replay_veto_status: int = STATUS_INSUFFICIENT_RESOURCES
    hotadds: tuple[HotAdd, ...] = ()
    deregister: bool = True
    unload: bool = True
    profile: Profile = Profile.WINDOWS
    veto_failure_delivered: bool = True
    replay_irql: int = 0
    group_size: int = 64
    step_ns: int = 1_000
    hotadds_in_window: int = 0
    adds_during_load: int = 0
    replayed_adds: int = 0

    def __post_init__(self) -> None:
        _require(self.existing >= 1, "at least one processor is active at load")
        _require(1 <= self.group_size <= 64, "group_size is 1..64")
        _require(self.step_ns >= 1, "step_ns must be positive")
        _require(not nt_success(self.replay_veto_status), "replay_veto_status must be an error")
        if self.replay_veto_at is not None:
            _require(self.add_existing, "a replay veto needs add_existing")
            _require(0 <= self.replay_veto_at < self.existing,
                     f"replay_veto_at must be in 0..{self.existing - 1}")
            _require(not self.hotadds and not self.deregister,
                     "after a replay veto the callback is not registered: no hot-adds, no "
                     "deregister")
        else:
            _require(self.deregister or not self.unload,
                     "a registered callback must be deregistered before unload")
        if self.profile is Profile.LINUX:
            _require(self.veto_failure_delivered and self.replay_irql == 0,
                     "the Linux probe always writes the veto Failure and irql 0")
            _require(self.existing + len(self.hotadds) <= 256,
                     "the Linux probe writes the CPU id as number, which the format caps at 255")
        _require(self.replay_irql in (0, APC_LEVEL), "replay_irql is 0 or APC_LEVEL")
        _require(0 <= self.hotadds_in_window <= len(self.hotadds) - self.replayed_adds,
                 "hotadds_in_window counts some of the hot-adds the replay did not cover")
        _require(0 <= self.replayed_adds <= self.adds_during_load <= len(self.hotadds),
                 "replayed_adds <= adds_during_load <= the hot-adds")
        _require(not self.replayed_adds or (self.add_existing and all(
            add.completes for add in self.hotadds[:self.replayed_adds])),
                 "a replayed add came online: it needs add_existing and no veto or failure")

    @property
    def completed_adds(self) -> int:
        return sum(1 for add in self.hotadds if add.completes)

    def host_facts(self) -> HostFacts:
        """The host-side counts of the modelled run, for `check(..., host=...)`."""
        return HostFacts(adds_performed=len(self.hotadds), adds_expected_ok=self.completed_adds,
                         boot_cpus=self.existing, guest_count=self.existing + self.completed_adds,
                         adds_during_load=self.adds_during_load)

    def records(self) -> list[Record]:
        """The records a correct probe writes for this run, seq 1.. and t_ns from 0."""
        out: list[Record] = []
        self.stream(out.append)
        return out

    def stream(self, sink: Callable[[Record], None]) -> None:
        """`records()` one at a time into `sink`, holding none of them: traces of millions
        of records for the oracle's benchmark and its bounded-memory test."""
        w = _Writer(self.step_ns, self._processor_number, sink)
        w.driver(DriverEvent.LOAD, active_count=self.existing,
                 flags=ADD_EXISTING if self.add_existing else 0)
        if not self._replay(w):
            w.driver(DriverEvent.REGISTER_FAILED, status=self.replay_veto_status)
        else:
            later = self.hotadds[self.replayed_adds:]
            active = self._hotadds(w, later[:self.hotadds_in_window],
                                   self.existing + self.replayed_adds)
            w.driver(DriverEvent.REGISTERED)
            self._hotadds(w, later[self.hotadds_in_window:], active)
            if self.deregister:
                w.driver(DriverEvent.DEREGISTERED)
        if self.unload:
            w.driver(DriverEvent.UNLOAD)

    def _processor_number(self, nt: int) -> tuple[int, int]:
        if self.profile is Profile.LINUX:
            return 0, nt
        return nt // self.group_size, nt % self.group_size

    def _replay(self, w: _Writer) -> bool:
        """Write the registration replay; False when it was vetoed."""
        if not self.add_existing:
            return True
        n, irql, replay = self.existing + self.replayed_adds, self.replay_irql, Phase.REPLAY
        veto = self.replay_veto_at
        for nt in range(n if veto is None else veto + 1):
            w.notify(NotifyState.START, replay, nt, n, irql=irql,
                     op_status=self.replay_veto_status if nt == veto else 0)
        if veto is not None:
            for nt in range(veto):
                w.notify(NotifyState.FAILURE, replay, nt, n, status=self.replay_veto_status,
                         irql=irql)
            return False
        for nt in range(n):
            w.notify(NotifyState.COMPLETE, replay, nt, n, irql=irql)
        return True

    def _hotadds(self, w: _Writer, hotadds: Sequence[HotAdd], active: int) -> int:
        """Write these hot-adds, `active` processors (0..active-1) active before them; returns
        how many are active after them (there is no hot-remove)."""
        for add in hotadds:
            w.notify(NotifyState.START, Phase.HOTADD, active, active, op_status=add.veto)
            w.t += add.latency_ns
            if add.completes:
                w.notify(NotifyState.COMPLETE, Phase.HOTADD, active, active + 1)
                active += 1
            elif add.failure or self.veto_failure_delivered:
                w.notify(NotifyState.FAILURE, Phase.HOTADD, active, active,
                         status=add.failure or add.veto)
        return active


@dataclass
class _Writer:
    """Numbers and time-stamps records as the probe would: seq 1.., t_ns advancing."""

    step_ns: int
    processor_number: Callable[[int], tuple[int, int]]
    sink: Callable[[Record], None]
    written: int = 0
    t: int = 0

    def _emit(self, record: Record) -> None:
        self.sink(record)
        self.written += 1
        self.t += self.step_ns

    def driver(self, event: DriverEvent, active_count: int | None = None,
               flags: int | None = None, status: int | None = None) -> None:
        self._emit(DriverRecord(seq=self.written + 1, t_ns=self.t, event=event,
                                active_count=active_count, flags=flags, status=status))

    def notify(self, state: NotifyState, phase: Phase, nt: int, active: int, *, status: int = 0,
               op_status: int = 0, irql: int = 0) -> None:
        group, number = self.processor_number(nt)
        self._emit(NotifyRecord(
            seq=self.written + 1, t_ns=self.t, state=state, phase=phase, nt_number=nt,
            group=group, number=number, status=status, op_status=op_status,
            active_count=active, irql=irql, op_status_in=0))


# Editing traces: for tests that break one thing in a valid trace, and for hand-made variants.

def renumber(records: Sequence[Record]) -> list[Record]:
    """The same records with seq rewritten to 1, 2, 3, ... in list order."""
    return [replace(r, seq=i) for i, r in enumerate(records, start=1)]


def edited(records: Sequence[Record], index: int, **changes: Any) -> list[Record]:
    """A copy with record `index` changed (dataclasses.replace semantics)."""
    out = list(records)
    out[index] = replace(out[index], **changes)
    return out


def without(records: Sequence[Record], *indices: int) -> list[Record]:
    """A renumbered copy without the records at `indices`."""
    drop = set(indices)
    return renumber([r for i, r in enumerate(records) if i not in drop])


def find(records: Sequence[Record], predicate: Callable[[Record], bool], nth: int = 0) -> int:
    """Index of the nth record matching `predicate` (IndexError when there is none)."""
    return [i for i, r in enumerate(records) if predicate(r)][nth]


def lost(records: Sequence[Record], start: int, stop: int) -> list[Record]:
    """What the Windows probe writes when its ring overflows and records[start:stop] are lost.

    One `dropped` line (count stop - start) takes their place and its own seq, so seq stays
    gap-free; it carries the t_ns of the record after the loss, or, when the loss reaches the
    end, of the last record lost (the driver's final flush comes after it). Losses before the
    same kept record make one line. See driver/recorder/probe_ring.c (HapDrain).
    """
    if not 0 < start < stop <= len(records):
        raise ValueError(f"cannot lose records[{start}:{stop}] of {len(records)}: the load "
                         "record is never lost and at least one record must be")
    t_ns = records[min(stop, len(records) - 1)].t_ns
    dropped = DriverRecord(seq=0, t_ns=t_ns, event=DriverEvent.DROPPED, count=stop - start)
    return renumber([*records[:start], dropped, *records[stop:]])

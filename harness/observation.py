"""What a run observes of each hot-add and of the host, and how it waits for it: `AddOutcome`
(host call, ACPI _OST, the probe's start and end, when hotadd knew the end), `await_add` (the
add's one deadline), and the host's own checks (`HostCheck`, `host_checks`) beside the oracle.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from harness.host.events import OstEvent
from harness.host.machine import PluggedVcpu
from harness.live import start_end
from harness.oracle import Profile as OracleProfile
from harness.oracle import Severity
from harness.records import DriverEvent, DriverRecord, NotifyRecord, NotifyState, Phase, Record
from harness.spec import ScenarioSpec


@dataclass(frozen=True)
class HostCheck:
    """A check of the host's own observations (QEMU, _OST), beside the oracle's rules."""

    check_id: str
    severity: Severity
    passed: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"severity": self.severity.value}


@dataclass(frozen=True)
class AddOutcome:
    """One hot-add as the host and the guest saw it. Times in ms after the host's call;
    `~` values map guest times to host time through `RunResult.clock` (± its uncertainty)."""

    index: int
    plugged: PluggedVcpu
    ost_status: int | None
    ost_ms: float | None
    guest_index: int | None  # nt_number of the probe's start record
    end_state: str  # "complete", "failure", or "none" (the guest never answered)
    start_ms_approx: float | None
    end_ms_approx: float | None
    start_to_end_ms: float | None  # guest clock: exact
    known_ms: float | None = None  # host: when hotadd had the end record (harness.live)
    known_via: str = "none"  # how: "console" (pushed) or "transport" (fetched)

    def to_dict(self) -> dict[str, Any]:
        slot = self.plugged.slot
        return {
            "index": self.index, "libvirt_vcpu": self.plugged.libvirt_id,
            "method": self.plugged.method.value,
            "qemu": {"socket": slot.socket_id, "die": slot.die_id, "core": slot.core_id,
                     "thread": slot.thread_id, "qom_path": slot.qom_path},
            "host_t_wall": self.plugged.t_wall,
            "call_ms": round(self.plugged.call_seconds * 1000, 3),
            "ost_status": self.ost_status, "ost_ms": _r(self.ost_ms),
            "guest_index": self.guest_index, "end_state": self.end_state,
            "start_ms_approx": _r(self.start_ms_approx), "end_ms_approx": _r(self.end_ms_approx),
            "start_to_end_ms": _r(self.start_to_end_ms),
            "known_ms": _r(self.known_ms), "known_via": self.known_via,
            "known_gap_ms": _r(self.known_gap_ms),
        }

    @property
    def known_gap_ms(self) -> float | None:
        """From the probe's end record (mapped to host time) to hotadd knowing it."""
        if self.known_ms is None or self.end_ms_approx is None:
            return None
        return self.known_ms - self.end_ms_approx


@dataclass(frozen=True)
class Performed:
    """What a test driving an attempt's steps itself did, where it departed from its spec's
    plan (another number of adds). The spec stays what was asked; the oracle, the host checks
    and result.json's `scenario` judge this."""

    adds: int
    add_after_unload: bool

    def scenario_fields(self) -> dict[str, Any]:
        """result.json `scenario` keys these replace (ids: the plan's no longer apply)."""
        return {"adds": self.adds, "vcpu_ids": [], "add_after_unload": self.add_after_unload}


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


@dataclass(frozen=True)
class LoadWindow:
    """Where the adds of a --load-during-adds run landed, from the probe's records: counts,
    not attributions (which add became which processor is the guest's choice). Every add was
    plugged (its setVcpu returned) before the load was sent; result.json's `load_window`."""

    adds: int
    boot_count: int  # processors online before the first add (the guest's own count)
    load_count: int | None  # the probe's load record: online when the probe loaded
    replay_count: int | None  # online when the replay ran (its first record's active_count)
    hotadd_in_window: int  # hot-add Starts inside the register call (before `registered`)
    hotadd_after: int  # hot-add Starts after the register call returned
    load_sent_ms: float  # host: the load command sent, ms after the first add's setVcpu
    load_ms: float  # host: the load command's round trip

    @classmethod
    def observe(cls, records: Sequence[Record], boot: int, adds: int, load_sent_ms: float,
                load_ms: float) -> LoadWindow:
        load = replay = None
        registered = False
        inside = after = 0
        for r in records:
            if isinstance(r, DriverRecord):
                if r.event is DriverEvent.LOAD and load is None:
                    load = r.active_count
                registered = registered or r.event in (DriverEvent.REGISTERED,
                                                       DriverEvent.REGISTER_FAILED)
            elif r.phase is Phase.REPLAY and not registered:
                replay = r.active_count if replay is None else replay
            elif r.state is NotifyState.START:
                inside, after = (inside, after + 1) if registered else (inside + 1, after)
        return cls(adds, boot, load, replay, inside, after, load_sent_ms, load_ms)

    @property
    def online_before_load(self) -> int:
        """Adds already online when the probe wrote its load record (seen in the replay)."""
        return max((self.load_count or self.boot_count) - self.boot_count, 0)

    @property
    def replayed_in_window(self) -> int:
        """Adds that came online between the load record and the replay (on Linux the
        replay's cpus_read_lock() waited for their cpu_up())."""
        if self.replay_count is None or self.load_count is None:
            return 0
        return max(self.replay_count - self.load_count, 0)

    @property
    def replayed(self) -> int:
        """Adds the replay covered: online before it ran."""
        return min(self.online_before_load + self.replayed_in_window, self.adds)

    @property
    def in_flight_at_load(self) -> int:
        """Adds plugged but not yet online when the probe loaded: the registration ran while
        they were on their way (the window this option exercises)."""
        return self.adds - self.online_before_load

    @property
    def raced_registration(self) -> int:
        """Adds that landed inside the register call itself: replayed after the load record,
        or notified before `registered`."""
        return self.replayed_in_window + self.hotadd_in_window

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {
            "load_sent_ms": _r(self.load_sent_ms), "load_ms": _r(self.load_ms),
            "online_before_load": self.online_before_load,
            "replayed_in_window": self.replayed_in_window, "replayed": self.replayed,
            "in_flight_at_load": self.in_flight_at_load,
            "raced_registration": self.raced_registration}

    def describe(self) -> str:
        return (f"load during adds: {self.adds} plugged, then the load (sent "
                f"{self.load_sent_ms:.1f} ms after the first, {self.load_ms:.1f} ms round trip); "
                f"{self.in_flight_at_load} still in flight when the probe loaded; "
                f"{self.replayed} in the replay ({self.replayed_in_window} came online inside "
                f"the register call), {self.hotadd_in_window} hot-added inside it, "
                f"{self.hotadd_after} after it")


def hotadd_episodes(records: Sequence[Record],
                    ) -> list[tuple[NotifyRecord, NotifyRecord | None]]:
    """Each hot-add Start with the Complete/Failure of its processor, in Start order."""
    out: list[tuple[NotifyRecord, NotifyRecord | None]] = []
    for r in records:
        if not isinstance(r, NotifyRecord) or r.phase is not Phase.HOTADD:
            continue
        if r.state is NotifyState.START:
            out.append((r, None))
        else:
            i = next((i for i, (s, e) in enumerate(out)
                      if e is None and s.nt_number == r.nt_number), None)
            if i is not None:
                out[i] = (out[i][0], r)
    return out



def await_add(poll_ost: Callable[[], OstEvent | None],
              poll_records: Callable[[], Sequence[NotifyRecord]], timeout: float,
              tick: Callable[[], None], *, clock: Callable[[], float] = time.monotonic,
              pause: Callable[[float], None] = time.sleep,
              ) -> tuple[OstEvent | None, NotifyRecord | None, NotifyRecord | None]:
    """Wait for the guest's _OST and for the probe's start and complete/failure of one add at
    the same time, under one deadline: an _OST that never comes costs `timeout` once, not
    `timeout` before the record wait even begins. Returns (ost, start, end); None = missing.
    `tick` runs between polls (liveness check, progress); `pause` is the run's console wait
    (`RecordFeed.pause`: woken when a pushed record ends the add); `clock`/`pause` fake time
    in tests."""
    deadline = clock() + timeout
    ost: OstEvent | None = None
    start: NotifyRecord | None = None
    end: NotifyRecord | None = None
    while True:
        ost = ost or poll_ost()
        if end is None:
            start, end = start_end(poll_records())
        if (ost is not None and end is not None) or clock() >= deadline:
            return ost, start, end
        tick()
        pause(0.1)


def left(budget: float, since: float) -> float:
    """What is left of `budget` seconds started at monotonic time `since`."""
    return max(budget - (time.monotonic() - since), 0.0)



def host_checks(spec: ScenarioSpec, adds: Sequence[AddOutcome], qemu_present: int,
                qemu_running: int, guest_count: int) -> list[HostCheck]:
    """QEMU's CPU counts, each add's _OST, and the guest's online count against `spec` and
    the adds made (a test driving the steps may make fewer or more than the spec planned)."""
    plan = spec.vcpu_plan
    expected_present = plan.boot + len(adds)
    # Linux always answers _OST; whether Windows does is an open question (a warning).
    ost_severity = (Severity.FAIL if spec.kind_class.oracle_profile is OracleProfile.LINUX
                    else Severity.WARN)
    checks = [
        HostCheck("qemu.present", Severity.FAIL, qemu_present == expected_present,
                  f"QEMU shows {qemu_present} CPUs plugged, expected {plan.boot} boot + "
                  f"{len(adds)} added = {expected_present}"),
        HostCheck("qemu.running", Severity.FAIL, qemu_running == qemu_present,
                  f"query-cpus-fast lists {qemu_running} CPUs for {qemu_present} plugged"),
    ]
    for add in adds:
        ok = add.ost_status == 0
        checks.append(HostCheck(
            "ost.status", ost_severity, ok,
            f"add {add.index} (vCPU {add.plugged.libvirt_id}): " + (
                f"_OST status {add.ost_status} after {add.ost_ms:.1f} ms"
                if add.ost_ms is not None else "no ACPI_DEVICE_OST from the guest")))
    expected_online = plan.boot + (0 if spec.replay_vetoed else spec.expected_ok(len(adds)))
    checks.append(HostCheck(
        "guest.online", Severity.FAIL, guest_count == expected_online,
        f"the guest reports {guest_count} processors online, expected {expected_online}"))
    return checks

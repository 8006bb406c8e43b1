"""One probe load on a running guest, step by step (`Attempt`): load and map the clocks, each
add, unload, collect, the verdict; and what a failed or interrupted attempt still reports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import libvirt

from harness.clock import ClockMapping, ClockSample, map_clock
from harness.developer import DriverUnderTest
from harness.errors import GuestCrashed, HotaddError, InputError, QemuFrozen
from harness.guests.base import DriverOrder, GuestFacts, Session
from harness.host.events import OstEvent
from harness.host.machine import Machine, PluggedVcpu, QemuView
from harness.live import RecordFeed
from harness.observation import (
    AddOutcome,
    HostCheck,
    LoadWindow,
    Performed,
    await_add,
    host_checks,
    hotadd_episodes,
    left,
)
from harness.oracle import HostFacts, Verdict, check
from harness.pool import Guest
from harness.progress import Progress
from harness.records import DriverRecord, NotifyRecord, NotifyState, Record, parse_records
from harness.result import Interruption, RunResult, failure_fields
from harness.spec import ScenarioSpec

CLOCK_ROUND_TRIPS = 8  # reads of the probe's clock after load (harness.clock)


class Attempt:
    """One probe load on a running guest, step by step: `load`, `add`..., `unload`,
    optionally `add_after_unload`, then `finish` for the verdict. `run()` does what the spec
    says in one go (that is `hotadd run`); the pytest plugin calls the steps itself."""

    def __init__(self, guest: Guest, spec: ScenarioSpec, run_dir: Path,
                 progress: Progress) -> None:
        self.guest = guest
        self.spec: Final = spec  # what was asked, for the attempt's life (see `finish`)
        self.run_dir = run_dir
        self.progress = progress
        self.versions = dict(guest.host.versions)
        self.adds: list[AddOutcome] = []
        self.plugged: list[PluggedVcpu] = []
        self.clock_offset: float | None = None  # host Unix time of guest t_ns == 0
        self.clock: ClockMapping | None = None  # the offset with its uncertainty
        self.clock_method = "load"  # "handshake": the probe's clock was read after the load
        self._boot_count: int | None = None
        self._after_adds: tuple[int, QemuView] | None = None  # guest count, QEMU's view
        self.after_unload: AddOutcome | None = None
        self.guest_facts: GuestFacts | None = None
        self._unloaded = False
        self._feed: RecordFeed | None = None  # the probe's records as they are written
        self.probe_touched = False  # the probe began to load: a crash from now on is a verdict
        self.window: LoadWindow | None = None  # --load-during-adds: where the adds landed
        self._load_span: tuple[float, float] | None = None  # host times: load sent, returned
        own = spec.own_driver
        self.own = (DriverUnderTest(own, guest.kind, progress, run_dir) if own else None)

    @property
    def session(self) -> Session:
        if self.guest.session is None:
            raise InputError("the guest has no open session", "call Guest.connect() first")
        return self.guest.session

    @property
    def machine(self) -> Machine:
        return self.guest.machine

    def load(self) -> None:
        if self.guest_facts is None:
            self.guest_facts = self.session.facts()
            if self.guest_facts is not None and self.guest_facts.vbs == "running":
                self.progress.say("warning: virtualization-based security is running in the "
                                  "guest; it is not supported with CPU hot-add")
        own_first = self.own is not None and self.own.driver.order is DriverOrder.BEFORE
        if own_first and self.own is not None:
            self.machine.check_alive()  # a crash before the drivers is the lab's
            self.probe_touched = True
            self.own.load(self.session)
        with self.progress.stage("load", "the probe to register"):
            self.machine.check_alive()  # a crash before the probe is the lab's, not a verdict
            self.probe_touched = True
            self._feed = RecordFeed(self.guest.kind, self.session, self.machine.spec.serial_log)
            sent = time.time()
            self.session.load_probe(self.spec.probe)
            loaded_at = time.time()
            self._load_span = (sent, loaded_at)
            if self._boot_count is None:  # (load_during_adds counted before its adds)
                self._boot_count = self.session.processor_count()
        records = parse_records(self.session.live_records().splitlines())
        # the last driver record (registered) was written while the load ran: the load itself
        # is one round trip (a hot-add in flight may have written later ones since)
        last = next((r for r in reversed(records) if isinstance(r, DriverRecord)), None)
        samples = [ClockSample(sent, last.t_ns / 1e9, loaded_at)] if last else []
        with self.progress.stage("clock map", "round trips reading the probe's clock"):
            read = self.session.clock_samples(CLOCK_ROUND_TRIPS)
        self.clock_method = "handshake" if read else "load"
        self.clock = map_clock(samples + read)
        self.clock_offset = self.clock.offset if self.clock else None
        if self.own is not None and not own_first:
            self.own.load(self.session)

    def add(self, vcpu_id: int | None = None) -> AddOutcome:
        """Hot-add one vCPU (`vcpu_id`, or the lowest free one) and wait for the guest's _OST
        and the probe's start + complete/failure."""
        if self._after_adds is not None:
            raise InputError("the probe is unloaded: no more adds it could see",
                             "use add_after_unload() for an add the probe must not see")
        index = len(self.adds) + 1
        with self.progress.stage(f"add {index}", "setVcpu, _OST and the probe's records"):
            outcome = self._one_add(index, vcpu_id)
            if self.own is not None:
                self.own.after(f"add {index}", self.session)
        self.adds.append(outcome)
        return outcome

    def load_during_adds(self) -> None:
        """Plug every add of the spec, then load (`load`) while the guest is still bringing
        them online, and wait until each add is answered (_OST) and seen: in the replay
        (online before the register call) or as a hot-add. Which add became which processor
        is attributed in plug order (the guest brings them online in the order it is told)."""
        spec = self.spec
        self._boot_count = self.session.processor_count()  # before any add: the boot vCPUs
        with self.progress.stage("plug", f"{spec.adds} setVcpu calls, none awaited"):
            for i in range(spec.adds):
                self.plugged.append(self.machine.hotadd(
                    spec.vcpu_ids[i] if spec.vcpu_ids else None, spec.method,
                    timeout=spec.ack_timeout))
        t0 = time.monotonic()  # the adds' budget (--ack-timeout) starts once all are plugged
        self.load()
        plugged = self.plugged[:spec.adds]
        # what the replay covered is known once the load returned; the hot-adds come later
        window, _ = self._observe_window()
        osts = self._await_adds(plugged, spec.adds - window.replayed, t0)
        window, records = self._observe_window()
        episodes = hotadd_episodes(records)
        for k, p in enumerate(plugged):
            ost = osts.get(p.libvirt_id)
            start, end = (episodes[k - window.replayed] if
                          0 <= k - window.replayed < len(episodes) else (None, None))
            self.adds.append(AddOutcome(
                index=k + 1, plugged=p, ost_status=ost.status if ost else None,
                ost_ms=(ost.t_wall - p.t_wall) * 1000 if ost else None,
                guest_index=start.nt_number if start else None,
                end_state="replay" if k < window.replayed else end.state.value if end
                else "none",
                start_ms_approx=self._host_ms(p, start), end_ms_approx=self._host_ms(p, end),
                start_to_end_ms=(end.t_ns - start.t_ns) / 1e6 if start and end else None))

    def _observe_window(self) -> tuple[LoadWindow, list[Record]]:
        """The probe's records now, and where the adds landed by them (`self.window`)."""
        assert self._load_span is not None and self._boot_count is not None
        records = parse_records(self.session.live_records().splitlines())
        first = self.plugged[0].t_wall + self.plugged[0].call_seconds
        sent, loaded = self._load_span
        self.window = LoadWindow.observe(records, self._boot_count, self.spec.adds,
                                         (sent - first) * 1000, (loaded - sent) * 1000)
        return self.window, records

    def _await_adds(self, plugged: Sequence[PluggedVcpu], ends: int,
                    t0: float) -> dict[int, OstEvent]:
        """Wait, under one deadline, for every add's _OST and for `ends` hot-add
        Complete/Failure records; returns the _OST events by libvirt vCPU id."""
        machine, feed, spec = self.machine, self._feed, self.spec
        assert feed is not None

        def ended(notes: list[NotifyRecord]) -> bool:
            return sum(r.state is not NotifyState.START for r in notes) >= ends

        osts: dict[int, OstEvent] = {}
        with self.progress.stage("adds", "_OST and each add in the replay or as a hot-add"):
            while True:
                for p in plugged:
                    ost = osts.get(p.libvirt_id) or machine.wait_ost(p, 0)
                    if ost is not None:
                        osts[p.libvirt_id] = ost
                seen = ended(feed.hotadds())
                missing = [p for p in plugged if p.libvirt_id not in osts]
                done = seen and not missing
                if done or left(spec.ack_timeout, t0) <= 0:
                    break
                machine.check_alive()
                self.progress.waiting("adds", "ACPI _OST and the probe's records", t0)
                if seen:  # only _OST is missing: wake on its event, not on the console
                    machine.wait_ost(missing[0], min(0.1, left(spec.ack_timeout, t0)))
                else:
                    feed.wait_hotadds(ended, 0.1)
            machine.check_alive()
            if not done:  # a QEMU that stopped answering is no verdict
                machine.answers()
            if self.own is not None:
                self.own.after("adds", self.session)
        return osts

    def unload(self) -> None:
        """Note the guest's and QEMU's counts, then deregister and unload the probe."""
        self._after_adds = (self.session.processor_count(), self.machine.qemu_view())
        self._close_feed()
        own_last = self.own is not None and self.own.driver.order is DriverOrder.BEFORE
        if self.own is not None and not own_last:
            self.own.unload(self.session)
        with self.progress.stage("unload", "the probe to deregister"):
            self.session.unload_probe()
        self._unloaded = True
        if self.own is not None and own_last:
            self.own.unload(self.session)

    def add_after_unload(self) -> AddOutcome:
        """One more hot-add with the probe gone: the guest answers _OST, the probe must not."""
        if not self._unloaded:
            self.unload()
        with self.progress.stage("add after unload", "_OST (no record expected)"):
            t0 = time.monotonic()
            plugged = self.machine.hotadd(method=self.spec.method, timeout=self.spec.ack_timeout)
            self.plugged.append(plugged)
            ost = self.machine.wait_ost(plugged, left(self.spec.ack_timeout, t0))
            self.machine.check_alive()
            if ost is None:
                self.machine.answers()
        self.after_unload = AddOutcome(
            index=len(self.adds) + 1, plugged=plugged, ost_status=ost.status if ost else None,
            ost_ms=(ost.t_wall - plugged.t_wall) * 1000 if ost else None, guest_index=None,
            end_state="none", start_ms_approx=None, end_ms_approx=None, start_to_end_ms=None)
        return self.after_unload

    def run(self) -> RunResult:
        """The whole scenario of `self.spec`."""
        spec = self.spec
        if spec.load_during_adds:
            self.load_during_adds()
        else:
            self.load()
            if not spec.replay_vetoed:
                for i in range(spec.adds):
                    self.add(spec.vcpu_ids[i] if spec.vcpu_ids else None)
        self.unload()
        if spec.add_after_unload:
            self.add_after_unload()
        return self.finish()

    def finish(self) -> RunResult:
        """Collect the records (records.jsonl), run the oracle and the host checks."""
        if not self._unloaded:
            self.unload()
        assert self._after_adds is not None
        guest_count, qemu = self._after_adds
        spec, made = self.spec, len(self.adds)
        # steps taken one by one: judge what was done, not what the spec planned
        departed = made != spec.adds and not spec.replay_vetoed
        with self.progress.stage("collect", "the probe's records"):
            text = self.session.final_records()
            (self.run_dir / "records.jsonl").write_text(text)
            final = parse_records(text.splitlines())
        facts = HostFacts(
            adds_performed=made,
            adds_expected_ok=(None if spec.replay_vetoed and made != spec.adds
                              else spec.expected_ok(made)),
            boot_cpus=self._boot_count, guest_count=guest_count,
            adds_during_load=made if self.window is not None else 0)
        profile = spec.kind_class.oracle_profile
        verdict = check(final, profile, facts)
        if self.own is not None:
            self.own.collect(self.session, profile, facts)
        checks = host_checks(spec, self.adds, qemu.present, qemu.running_cpus, guest_count)
        performed = Performed(made, self.after_unload is not None) if departed else None
        return self._result(verdict, checks, performed=performed)

    def failed(self, exc: HotaddError) -> RunResult:
        """The result of an attempt that raised: a screenshot, and after a crash the records
        the serial console still has (the transport is gone)."""
        exc = self.machine.cause_of(exc)
        if isinstance(exc, GuestCrashed) and self.probe_touched:
            exc.under_test = True
        if self.guest.running and not isinstance(exc, QemuFrozen):  # a frozen one never draws
            _screenshot(self.machine, self.run_dir)
            if isinstance(exc, GuestCrashed):
                # the transport is gone; the serial console still has what the probe printed
                serial = self.machine.serial_text()
                records = self.guest.kind.console_records(serial)
                if records:
                    (self.run_dir / "records.jsonl").write_text(records)
                if self.own is not None:
                    self.own.after_crash(serial, exc.excerpt)
                    if self.own.faulting_module:
                        exc.add_note(f"the crash report blames {self.own.faulting_module}")
        return self._result(None, (), exc)

    def interrupted(self, exc: KeyboardInterrupt) -> RunResult:
        """The result of an attempt a Ctrl-C/SIGTERM cut short: what was done until then."""
        cut = Interruption.of(exc, self.progress)
        return dataclasses.replace(self._result(None, ()), error=cut.describe(), interrupted=cut)

    def _result(self, verdict: Verdict | None, checks: Sequence[HostCheck],
                exc: HotaddError | None = None, *,
                performed: Performed | None = None) -> RunResult:
        self._close_feed()
        self.progress.timings["total"] = self.progress.elapsed()
        return RunResult(self.spec, self.run_dir, self.guest.name, verdict, tuple(checks),
                         tuple(self.adds), dict(self.progress.timings), dict(self.versions),
                         clock_offset=self.clock_offset, after_unload=self.after_unload,
                         guest=self.guest_facts, start=self.guest.start_info,
                         clock=self.clock, clock_method=self.clock_method,
                         driver=self.own.report() if self.own else None, performed=performed,
                         load_window=self.window, **failure_fields(exc))

    def _one_add(self, index: int, vcpu_id: int | None) -> AddOutcome:
        spec, progress, machine, feed = self.spec, self.progress, self.machine, self._feed
        if feed is None:
            raise InputError("the probe is not loaded", "call load() first")
        mark = feed.mark()
        t0 = time.monotonic()  # the add's budget (--ack-timeout) covers the libvirt call too
        plugged = machine.hotadd(vcpu_id, spec.method, timeout=spec.ack_timeout)
        self.plugged.append(plugged)

        def tick() -> None:
            machine.check_alive()
            progress.waiting(f"add {index}", "ACPI _OST and the probe's start and end", t0)

        ost, start, end = await_add(
            lambda: machine.wait_ost(plugged, 0), lambda: feed.poll(mark),
            left(spec.ack_timeout, t0), tick, pause=lambda seconds: feed.pause(mark, seconds))
        seen = feed.seen
        machine.check_alive()
        if ost is None or end is None:  # a QEMU that stopped answering is no verdict
            machine.answers()
        return AddOutcome(
            index=index, plugged=plugged,
            ost_status=ost.status if ost else None,
            ost_ms=(ost.t_wall - plugged.t_wall) * 1000 if ost else None,
            guest_index=start.nt_number if start else None,
            end_state=end.state.value if end else "none",
            start_ms_approx=self._host_ms(plugged, start),
            end_ms_approx=self._host_ms(plugged, end),
            start_to_end_ms=(end.t_ns - start.t_ns) / 1e6 if start and end else None,
            known_ms=(seen.known_at - plugged.t_wall) * 1000 if seen.known_at else None,
            known_via=seen.via,
        )

    def _close_feed(self) -> None:
        if self._feed is not None:
            self._feed.close()
            self._feed = None

    def _host_ms(self, plugged: PluggedVcpu, record: NotifyRecord | None) -> float | None:
        """Host ms from the add to a guest record, through the load-time clock offset."""
        if record is None or self.clock_offset is None:
            return None
        return (self.clock_offset + record.t_ns / 1e9 - plugged.t_wall) * 1000



def _screenshot(machine: Machine, run_dir: Path) -> None:
    with contextlib.suppress(HotaddError, libvirt.libvirtError):
        machine.screenshot(run_dir / "screenshot.png")

"""One hot-add run, start to verdict, as data.

spec -> connect + sweep -> guest image -> domain -> boot -> session -> load probe
-> for each add: setVcpu, wait for _OST and the probe's start + complete/failure
-> unload -> (optionally one more add, expecting silence) -> collect -> oracle + host checks
-> run directory (records.jsonl, serial.log, domain.xml, result.json, screenshot on failure).

Nothing here knows which guest OS runs: that is `harness.guests.base.GuestKind`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import __version__
from harness.errors import ExitCode, GuestCrashed, HotaddError, InputError
from harness.guests.base import GuestKind, GuestSession, HardwareRequest, ProbeSettings
from harness.host import accel, storage
from harness.host.connection import open_connection, versions
from harness.host.domain import Accelerator, Firmware, Topology, VcpuPlan
from harness.host.machine import HotplugMethod, Machine, PluggedVcpu, run_name
from harness.host.sweep import sweep
from harness.oracle import HostFacts, Verdict, check
from harness.oracle import Profile as OracleProfile
from harness.progress import Progress
from harness.records import NotifyRecord, NotifyState, Phase, parse_records

RESULT_SCHEMA = "hotadd.result/1"


class GuestChoice(enum.Enum):
    REFERENCE = "reference"
    WINDOWS = "windows"


class Severity(enum.Enum):
    FAIL = "fail"
    WARN = "warn"


@dataclass(frozen=True)
class ScenarioSpec:
    """Everything a run needs to know, validated before any VM exists."""

    guest: GuestChoice = GuestChoice.REFERENCE
    topology: Topology = field(default_factory=lambda: Topology(sockets=1, dies=1, cores=4))
    boot_vcpus: int = 2
    adds: int = 2
    vcpu_ids: tuple[int, ...] = ()  # specific libvirt vCPU ids to add, in order (else: next free)
    method: HotplugMethod = HotplugMethod.SET_VCPU
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    add_after_unload: bool = False  # one more add after the probe is gone: expect no record
    accelerator: Accelerator = Accelerator.AUTO
    firmware: Firmware | None = None
    memory_mib: int | None = None
    libvirt_uri: str | None = None
    run_dir: Path | None = None
    keep_on_failure: bool = False
    ready_timeout: float = 120.0
    ack_timeout: float = 60.0
    image: Path | None = None  # Windows golden image
    driver: Path | None = None  # Windows probe driver (.sys)

    def __post_init__(self) -> None:
        plan = self.vcpu_plan  # validates the topology
        if self.vcpu_ids:
            if len(self.vcpu_ids) != self.adds:
                raise InputError(f"{len(self.vcpu_ids)} vCPU ids given for {self.adds} adds",
                                 "give one id per add, or leave --vcpu-ids out")
            bad = [i for i in self.vcpu_ids if not plan.boot <= i < plan.maximum]
            if bad or len(set(self.vcpu_ids)) != len(self.vcpu_ids):
                raise InputError(f"vCPU ids {list(self.vcpu_ids)} must be distinct and in "
                                 f"{plan.boot}..{plan.maximum - 1} (the hot-pluggable ones)",
                                 "choose ids of vCPUs that are offline at boot")
            if self.method is HotplugMethod.SET_VCPUS and list(self.vcpu_ids) != sorted(
                    self.vcpu_ids):
                raise InputError("setVcpusFlags always plugs the lowest free vCPU",
                                 "use --method setVcpu to add specific ids out of order")
        wanted = self.adds + (1 if self.add_after_unload else 0)
        if wanted > plan.hotpluggable:
            raise InputError(
                f"{wanted} adds requested but only {plan.hotpluggable} vCPU slots are free "
                f"({plan.boot} of {plan.maximum} online at boot)",
                "raise the max vCPUs (topology) or lower --adds")
        if self.adds < 0:
            raise InputError("--adds must be >= 0", "give a non-negative number of adds")

    @property
    def vcpu_plan(self) -> VcpuPlan:
        return VcpuPlan(self.topology, boot=self.boot_vcpus)

    @property
    def adds_expected_ok(self) -> int:
        """Adds the guest should complete: all but one whose expected index is vetoed.

        Hot-added processors get the next free index (boot, boot+1, ...), so a veto index in
        that range names exactly one add.
        """
        veto = self.probe.veto_index
        vetoed = veto is not None and self.boot_vcpus <= veto < self.boot_vcpus + self.adds
        return self.adds - (1 if vetoed else 0)

    @property
    def replay_vetoed(self) -> bool:
        veto = self.probe.veto_index
        return self.probe.add_existing and veto is not None and veto < self.boot_vcpus


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
    `~` values map guest times to host time through the load handshake (±a few ms)."""

    index: int
    plugged: PluggedVcpu
    ost_status: int | None
    ost_ms: float | None
    guest_index: int | None  # nt_number of the probe's start record
    end_state: str  # "complete", "failure", or "none" (the guest never answered)
    start_ms_approx: float | None
    end_ms_approx: float | None
    start_to_end_ms: float | None  # guest clock: exact

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
        }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


@dataclass(frozen=True)
class RunResult:
    spec: ScenarioSpec
    run_dir: Path
    domain: str
    verdict: Verdict | None  # None when the run broke before records existed
    host_checks: tuple[HostCheck, ...]
    adds: tuple[AddOutcome, ...]
    timings: dict[str, float]
    versions: dict[str, str]
    error: str | None = None  # a harness error (exit 2) or a guest crash (exit 1)
    crashed: str | None = None  # the crash description (bugcheck) if the guest died

    @property
    def passed(self) -> bool:
        return (self.error is None and self.verdict is not None and self.verdict.passed
                and all(c.passed or c.severity is Severity.WARN for c in self.host_checks))

    @property
    def exit_code(self) -> ExitCode:
        if self.passed:
            return ExitCode.PASS
        if self.error is not None and self.crashed is None:
            return ExitCode.HARNESS_ERROR
        return ExitCode.VERDICT_FAIL

    def to_dict(self) -> dict[str, Any]:
        outcome = ("pass" if self.passed else
                   "error" if self.exit_code is ExitCode.HARNESS_ERROR else "fail")
        return {
            "schema": RESULT_SCHEMA, "outcome": outcome, "exit_code": int(self.exit_code),
            "domain": self.domain, "run_dir": str(self.run_dir), "error": self.error,
            "crashed": self.crashed,
            "scenario": _spec_dict(self.spec),
            "verdict": self.verdict.to_dict() if self.verdict else None,
            "host_checks": [c.to_dict() for c in self.host_checks],
            "adds": [a.to_dict() for a in self.adds],
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "versions": self.versions,
        }


def _spec_dict(spec: ScenarioSpec) -> dict[str, Any]:
    def plain(v: Any) -> Any:
        if isinstance(v, enum.Enum):
            return v.value
        if isinstance(v, Path):
            return str(v)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        return v

    out: dict[str, Any] = plain(spec)
    return out


def guest_kind(spec: ScenarioSpec) -> GuestKind:
    if spec.guest is GuestChoice.REFERENCE:
        from harness.guests.reference_kind import ReferenceGuest

        return ReferenceGuest()
    from harness.guests.windows_kind import WindowsGuest

    return WindowsGuest(image=spec.image, driver=spec.driver)


def default_run_dir(domain: str) -> Path:
    return Path.cwd() / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{domain}"


# --- the run ----------------------------------------------------------------------------------

@dataclass
class _Run:
    """Mutable state of one run while it happens; frozen into a RunResult at the end."""

    spec: ScenarioSpec
    kind: GuestKind
    progress: Progress
    domain: str
    run_dir: Path
    versions: dict[str, str] = field(default_factory=dict)
    adds: list[AddOutcome] = field(default_factory=list)
    plugged: list[PluggedVcpu] = field(default_factory=list)
    checks: list[HostCheck] = field(default_factory=list)
    clock_offset: float | None = None  # host Unix time of guest t_ns == 0

    def result(self, verdict: Verdict | None, error: str | None = None,
               crashed: str | None = None) -> RunResult:
        self.progress.timings["total"] = self.progress.elapsed()
        return RunResult(self.spec, self.run_dir, self.domain, verdict, tuple(self.checks),
                         tuple(self.adds), dict(self.progress.timings), dict(self.versions),
                         error, crashed)


def run_scenario(spec: ScenarioSpec, progress: Progress | None = None) -> RunResult:
    """Run one scenario. Returns a result for pass, verdict failure, and guest crashes alike;
    raises HotaddError only for input errors found before anything started. The run directory
    always ends up with result.json."""
    progress = progress or Progress()
    domain = run_name(spec.guest.value)
    run_dir = spec.run_dir or default_run_dir(domain)
    run_dir.mkdir(parents=True, exist_ok=True)
    kind = guest_kind(spec)
    run = _Run(spec, kind, progress, domain, run_dir)
    run.versions = {"hotadd": __version__, "python": platform.python_version()}
    try:
        result = _run(run)
    except HotaddError as exc:
        crashed = str(exc.problem) if isinstance(exc, GuestCrashed) else None
        result = run.result(None, error=str(exc), crashed=crashed)
    write_result(result)
    return result


def write_result(result: RunResult) -> Path:
    path = result.run_dir / "result.json"
    path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return path


def _run(run: _Run) -> RunResult:
    spec, progress = run.spec, run.progress
    with progress.stage("prepare", f"{run.kind.name} guest image"):
        run.kind.prepare(progress)
    choice = accel.resolve(spec.accelerator)
    progress.say(f"accelerator: {choice.accelerator.value} ({choice.reason})")
    with progress.stage("connect", "libvirt"):
        conn = open_connection(spec.libvirt_uri)
        run.versions |= dataclasses.asdict(versions(conn))
        run.versions["accelerator"] = choice.accelerator.value
        swept = sweep(conn)
        if swept.removed_domains or swept.removed_scratch:
            progress.say(swept.describe())
    try:
        scratch = storage.run_scratch(run.domain)
        hw = HardwareRequest(name=run.domain, vcpus=spec.vcpu_plan,
                             accelerator=choice.accelerator, run_dir=run.run_dir, scratch=scratch,
                             memory_mib=spec.memory_mib, firmware=spec.firmware)
        try:
            domain_spec = run.kind.domain_spec(hw)
        except BaseException:
            storage.remove_scratch(scratch)
            raise
        with progress.stage("boot", f"{run.domain} ({spec.vcpu_plan.boot} of "
                                    f"{spec.vcpu_plan.maximum} vCPUs, {spec.topology})"):
            machine = Machine.start(conn, domain_spec, scratch)
        with machine:
            result = _in_guest(run, machine)
            if not result.passed and spec.keep_on_failure:
                machine.keep = True
                progress.say(f"keeping {run.domain} for inspection (serial log "
                             f"{domain_spec.serial_log}); 'hotadd sweep' removes it")
            return result
    finally:
        conn.close()


def _in_guest(run: _Run, machine: Machine) -> RunResult:
    spec, progress = run.spec, run.progress
    try:
        with progress.stage("ready", "the guest's transport"):
            session = run.kind.open_session(machine, progress, spec.ready_timeout)
        with session.transport:
            return _with_probe(run, machine, session)
    except GuestCrashed as exc:
        _screenshot(machine, run.run_dir)
        _save_records_from_serial(machine, run.run_dir)
        raise exc
    except HotaddError:
        _screenshot(machine, run.run_dir)
        raise


def _with_probe(run: _Run, machine: Machine, session: GuestSession) -> RunResult:
    spec, progress = run.spec, run.progress
    with progress.stage("load", "the probe to register"):
        session.load_probe(spec.probe)
        loaded_at = time.time()
        boot_count = session.processor_count()
    records = parse_records(session.live_records().splitlines())
    run.clock_offset = loaded_at - records[-1].t_ns / 1e9 if records else None
    if not spec.replay_vetoed:
        for i in range(spec.adds):
            vcpu_id = spec.vcpu_ids[i] if spec.vcpu_ids else None
            with progress.stage(f"add {i + 1}", "setVcpu, _OST and the probe's records"):
                run.adds.append(_one_add(run, machine, session, i + 1, vcpu_id))
    guest_count = session.processor_count()
    qemu = machine.qemu_view()
    with progress.stage("unload", "the probe to deregister"):
        session.unload_probe()
    if spec.add_after_unload:
        with progress.stage("add after unload", "_OST (no record expected)"):
            plugged = machine.hotadd(method=spec.method)
            run.plugged.append(plugged)
            machine.wait_ost(plugged, spec.ack_timeout)
            machine.check_alive()
    with progress.stage("collect", "the probe's records"):
        text = session.final_records()
        (run.run_dir / "records.jsonl").write_text(text)
        final = parse_records(text.splitlines())
    performed = len(run.adds)
    facts = HostFacts(adds_performed=performed,
                      adds_expected_ok=spec.adds_expected_ok if performed == spec.adds else None,
                      boot_cpus=boot_count, guest_count=guest_count)
    verdict = check(final, run.kind.oracle_profile, facts)
    run.checks.extend(_host_checks(run, qemu.present, qemu.running_cpus, guest_count))
    return run.result(verdict)


def _one_add(run: _Run, machine: Machine, session: GuestSession, index: int,
             vcpu_id: int | None) -> AddOutcome:
    spec, progress = run.spec, run.progress
    seen = _hotadd_notifies(session.live_records())
    plugged = machine.hotadd(vcpu_id, spec.method)
    run.plugged.append(plugged)
    t0 = time.monotonic()
    ost = machine.wait_ost(plugged, spec.ack_timeout,
                           tick=lambda: progress.waiting(f"add {index}", "ACPI _OST", t0))
    start: NotifyRecord | None = None
    end: NotifyRecord | None = None
    deadline = time.monotonic() + spec.ack_timeout
    while time.monotonic() < deadline:
        new = _hotadd_notifies(session.live_records())[len(seen):]
        start = next((r for r in new if r.state is NotifyState.START), None)
        end = next((r for r in new if start and r.state is not NotifyState.START
                    and r.nt_number == start.nt_number), None)
        if end is not None:
            break
        machine.check_alive()
        progress.waiting(f"add {index}", "the probe's start and complete/failure", t0)
        time.sleep(0.1)
    return AddOutcome(
        index=index, plugged=plugged,
        ost_status=ost.status if ost else None,
        ost_ms=(ost.t_wall - plugged.t_wall) * 1000 if ost else None,
        guest_index=start.nt_number if start else None,
        end_state=end.state.value if end else "none",
        start_ms_approx=run_ms(run, plugged, start), end_ms_approx=run_ms(run, plugged, end),
        start_to_end_ms=(end.t_ns - start.t_ns) / 1e6 if start and end else None,
    )


def run_ms(run: _Run, plugged: PluggedVcpu, record: NotifyRecord | None) -> float | None:
    """Host ms from the add to a guest record, through the load-time clock offset."""
    if record is None or run.clock_offset is None:
        return None
    return (run.clock_offset + record.t_ns / 1e9 - plugged.t_wall) * 1000


def _hotadd_notifies(text: str) -> list[NotifyRecord]:
    return [r for r in parse_records(text.splitlines())
            if isinstance(r, NotifyRecord) and r.phase is Phase.HOTADD]


def _host_checks(run: _Run, qemu_present: int, qemu_running: int,
                 guest_count: int) -> list[HostCheck]:
    spec = run.spec
    plan = spec.vcpu_plan
    expected_present = plan.boot + len(run.adds)
    # Linux always answers _OST; whether Windows does is an open question (a warning).
    ost_severity = (Severity.FAIL if run.kind.oracle_profile is OracleProfile.LINUX
                    else Severity.WARN)
    checks = [
        HostCheck("qemu.present", Severity.FAIL, qemu_present == expected_present,
                  f"QEMU shows {qemu_present} CPUs plugged, expected {plan.boot} boot + "
                  f"{len(run.adds)} added = {expected_present}"),
        HostCheck("qemu.running", Severity.FAIL, qemu_running == qemu_present,
                  f"query-cpus-fast lists {qemu_running} CPUs for {qemu_present} plugged"),
    ]
    for add in run.adds:
        ok = add.ost_status == 0
        checks.append(HostCheck(
            "ost.status", ost_severity, ok,
            f"add {add.index} (vCPU {add.plugged.libvirt_id}): " + (
                f"_OST status {add.ost_status} after {add.ost_ms:.1f} ms"
                if add.ost_ms is not None else "no ACPI_DEVICE_OST from the guest")))
    expected_online = plan.boot + (0 if spec.replay_vetoed else spec.adds_expected_ok)
    checks.append(HostCheck(
        "guest.online", Severity.FAIL, guest_count == expected_online,
        f"the guest reports {guest_count} processors online, expected {expected_online}"))
    return checks


def _screenshot(machine: Machine, run_dir: Path) -> None:
    with contextlib.suppress(HotaddError):
        machine.screenshot(run_dir / "screenshot.png")


def _save_records_from_serial(machine: Machine, run_dir: Path) -> None:
    """After a crash the transport is gone; the serial console still has what was printed."""
    lines = [line.split("hotadd-probe: ", 1)[1] for line in machine.serial_text().splitlines()
             if "hotadd-probe: {" in line]
    if lines:
        (run_dir / "records.jsonl").write_text("\n".join(lines) + "\n")

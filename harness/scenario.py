"""One hot-add run, start to verdict, as data.

spec -> connect + sweep -> guest image -> domain -> boot -> session -> load probe
-> for each add: setVcpu, wait for _OST and the probe's start + complete/failure
-> unload -> (optionally one more add, expecting silence) -> collect -> oracle + host checks
-> run directory (records.jsonl, serial.log, domain.xml, result.json, screenshot on failure).

The steps are objects so that the pytest plugin can drive them too: `open_host` (libvirt),
`Guest` (boot, session, save/restore), `Attempt` (one probe load: load, adds, unload, verdict).
`run_scenario` composes them. Nothing here knows which guest OS runs: that is
`harness.guests.base.GuestKind`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import platform
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt

from harness import __version__, interrupts, paths, rundir, warm
from harness.clock import ClockMapping, ClockSample, map_clock
from harness.developer import DriverReport, DriverUnderTest, check_package
from harness.errors import (
    ExitCode,
    GuestCrashed,
    GuestUnhealthy,
    HotaddError,
    InputError,
    Outcome,
    QemuFrozen,
    exit_code,
)
from harness.guests.base import (
    DriverOrder,
    DriverPackage,
    GuestFacts,
    GuestKind,
    HardwareRequest,
    ProbeSettings,
    Session,
)
from harness.host import accel, storage
from harness.host.connection import check_uri, open_connection, versions
from harness.host.domain import Accelerator, Firmware, GuestOS, Topology, VcpuPlan, to_xml
from harness.host.events import OstEvent
from harness.host.machine import HotplugMethod, Machine, PluggedVcpu, QemuView, run_name
from harness.host.sweep import sweep
from harness.live import RecordFeed, start_end
from harness.oracle import HostFacts, Severity, Verdict, check
from harness.oracle import Profile as OracleProfile
from harness.progress import Progress
from harness.records import NotifyRecord, parse_records
from harness.warm import BOOTED, COLD, StartInfo

RESULT_SCHEMA = "hotadd.result/1"
#: The oracle's rule set for each guest: the reference guest's probe speaks for Linux.
ORACLE_PROFILES = {GuestOS.REFERENCE: OracleProfile.LINUX, GuestOS.WINDOWS: OracleProfile.WINDOWS}
NTSTATUS_ERROR_MIN = 0x8000_0000  # the lowest 32-bit status with NT_SUCCESS false
CLOCK_ROUND_TRIPS = 8  # reads of the probe's clock after load (harness.clock)


@dataclass(frozen=True)
class ScenarioSpec:
    """Everything a run needs to know, validated before any VM exists."""

    guest: GuestOS = GuestOS.REFERENCE
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
    cold: bool = False  # boot, even if a saved guest could be restored (harness.warm)
    own_driver: DriverPackage | None = None  # a developer's driver beside the probe

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
        self._check_probe(plan)
        self._check_guest_options()

    def _check_probe(self, plan: VcpuPlan) -> None:
        """A veto must name a processor some notification is about, or it silently does
        nothing: an online one whose replay Start it vetoes, or one the adds will bring."""
        probe = self.probe
        if not NTSTATUS_ERROR_MIN <= probe.veto_status <= 0xFFFF_FFFF:
            raise InputError(f"veto status {probe.veto_status:#x} is not an NTSTATUS error code",
                             "give a 32-bit status with NT_SUCCESS false, e.g. 0xC000009A")
        veto = probe.veto_index
        if veto is not None and not (0 <= veto < plan.maximum):
            raise InputError(f"--veto-cpu {veto} is not a processor of this guest (indices "
                             f"0..{plan.maximum - 1}): it would veto nothing",
                             "choose an online index (vetoes the replay) or one the adds bring")
        if veto is not None and veto < plan.boot and not probe.add_existing:
            raise InputError(f"--veto-cpu {veto} is online at boot, and without the replay "
                             "(--no-add-existing) its Start is never called: it would veto "
                             "nothing", f"choose a hot-added index ({plan.boot}.."
                             f"{plan.maximum - 1}), or drop --no-add-existing")
        if self.guest is GuestOS.REFERENCE:
            from harness.guests.reference_kind import probe_params

            probe_params(probe)  # the statuses the Linux probe can report, before any boot

    def _check_guest_options(self) -> None:
        if self.memory_mib is not None and self.memory_mib < 1:
            raise InputError(f"--memory {self.memory_mib} MiB is no memory at all",
                             "give the guest memory in MiB, e.g. --memory 1024, or leave it out")
        if self.guest is GuestOS.REFERENCE:
            given = [name for name, value in (("--image", self.image), ("--driver", self.driver))
                     if value is not None]
            if given:
                verb = "is" if len(given) == 1 else "are"
                raise InputError(f"{' and '.join(given)} {verb} for --guest windows only; the "
                                 "reference guest is built by hotadd",
                                 f"add --guest windows, or leave {' and '.join(given)} out")
        for name, value in (("--ready-timeout", self.ready_timeout),
                            ("--ack-timeout", self.ack_timeout)):
            if not value > 0:
                raise InputError(f"{name} {value} must be greater than 0 seconds",
                                 f"give {name} in seconds, e.g. 60")
        if self.libvirt_uri is not None:
            check_uri(self.libvirt_uri)
        if self.own_driver is not None:
            check_package(self.guest, self.own_driver)

    def check_veto_reached(self) -> None:
        """A hot-add veto must name an index this run's adds will hand out (boot..boot+adds-1),
        or it silently does nothing. Checked for a whole run (`hotadd run`); a test driving the
        steps itself may add fewer than it planned."""
        veto, boot = self.probe.veto_index, self.boot_vcpus
        if veto is not None and veto >= boot and not veto < boot + self.adds:
            last = f"..{boot + self.adds - 1}" if self.adds > 1 else ""
            raise InputError(
                f"--veto-cpu {veto} is never hot-added: {self.adds} add(s) bring processor "
                f"indices {boot}{last}" if self.adds else
                f"--veto-cpu {veto} is never hot-added: this run adds no vCPU",
                f"choose one of those, or raise --adds to {veto - boot + 1}")

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


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def _guest_clock(clock: ClockMapping | None, offset: float | None,
                 method: str) -> dict[str, Any]:
    """result.json's guest_clock: the offset, its uncertainty (None: not mapped) and how it
    was measured ("load": the load round trip alone; "handshake": reads of the probe's clock
    after the load, `harness.clock`)."""
    if clock is None:
        return {"t0_host_wall": offset, "uncertainty_ms": None, "method": method}
    return {**clock.to_dict(), "method": method}


@dataclass(frozen=True)
class Interruption:
    """Which signal ended a run, in which stage, after which stages had finished."""

    signal: str
    stage: str | None  # None: between stages
    completed: tuple[str, ...]

    @classmethod
    def of(cls, exc: KeyboardInterrupt, progress: Progress) -> Interruption:
        stage = progress.interrupted_in
        done = tuple(k for k in progress.timings if k not in (stage, "total"))
        return cls(interrupts.signal_name(exc), stage, done)

    def describe(self) -> str:
        where = f"during {self.stage}" if self.stage else "between stages"
        return (f"interrupted by {self.signal} {where}; completed: "
                f"{', '.join(self.completed) or 'nothing'}")

    def to_dict(self) -> dict[str, Any]:
        return {"signal": self.signal, "stage": self.stage,
                "completed_stages": list(self.completed)}


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
    error: str | None = None  # what stopped the run: a harness error, or the guest's crash
    crashed: str | None = None  # the crash (bugcheck) if the guest died under test (a verdict)
    clock_offset: float | None = None  # host Unix time of the probe's t_ns == 0 (None: unknown)
    after_unload: AddOutcome | None = None  # the add made after the probe was unloaded
    guest: GuestFacts | None = None  # what the guest said about itself before the load
    interrupted: Interruption | None = None  # a Ctrl-C/SIGTERM ended the run early
    failed_stage: str | None = None  # the stage the error ended, e.g. "add 2, waiting for ..."
    console_excerpt: str | None = None  # what the console said when the guest crashed/wedged
    start: StartInfo | None = None  # booted or restored (None: the run broke before)
    clock: ClockMapping | None = None  # clock_offset with its measured uncertainty
    clock_method: str = "load"  # "handshake": round trips read the probe's clock after load
    driver: DriverReport | None = None  # the developer's driver, when one ran beside the probe

    @property
    def passed(self) -> bool:
        return (self.error is None and self.verdict is not None and self.verdict.passed
                and all(c.passed or c.severity is Severity.WARN for c in self.host_checks)
                and (self.driver is None or self.driver.passed))

    @property
    def outcome(self) -> Outcome:
        if self.interrupted is not None:
            return Outcome.INTERRUPTED
        if self.passed:
            return Outcome.PASS
        if self.error is None or self.crashed is not None:
            return Outcome.FAIL
        return Outcome.ERROR

    @property
    def exit_code(self) -> ExitCode:
        return exit_code(self.outcome)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": RESULT_SCHEMA, "outcome": self.outcome.value,
            "exit_code": int(self.exit_code),
            "domain": self.domain, "run_dir": str(self.run_dir), "error": self.error,
            "crashed": self.crashed,
            "scenario": _spec_dict(self.spec),
            "verdict": self.verdict.to_dict() if self.verdict else None,
            "host_checks": [c.to_dict() for c in self.host_checks],
            "adds": [a.to_dict() for a in self.adds],
            "add_after_unload": self.after_unload.to_dict() if self.after_unload else None,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "versions": self.versions,
            "guest_clock": _guest_clock(self.clock, self.clock_offset, self.clock_method),
            "start": self.start.to_dict() if self.start else None,
            "guest": dataclasses.asdict(self.guest) if self.guest else None,
            "interrupted": self.interrupted.to_dict() if self.interrupted else None,
            "failed_stage": self.failed_stage, "console_excerpt": self.console_excerpt,
            "driver": self.driver.to_dict() if self.driver else None,
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
    if spec.guest is GuestOS.REFERENCE:
        from harness.guests.reference_kind import ReferenceKind

        return ReferenceKind()
    from harness.guests.windows_kind import WindowsKind

    return WindowsKind(image=spec.image, driver=spec.driver)


def default_run_dir(domain: str) -> Path:
    return Path.cwd() / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{domain}"


def base_versions() -> dict[str, str]:
    return {"hotadd": __version__, "python": platform.python_version()}


# --- the steps --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Host:
    """An open libvirt connection and what it runs (one per `hotadd run`, one per pytest
    session)."""

    conn: libvirt.virConnect
    accelerator: Accelerator
    versions: Mapping[str, str]


@contextlib.contextmanager
def open_host(spec: ScenarioSpec, progress: Progress) -> Iterator[Host]:
    """Resolve the accelerator, connect to libvirt and sweep what crashed runs left behind."""
    choice = accel.resolve(spec.accelerator)
    progress.say(f"accelerator: {choice.accelerator.value} ({choice.reason})")
    with progress.stage("connect", "libvirt"):
        conn = open_connection(spec.libvirt_uri)
        try:
            found = dataclasses.asdict(versions(conn))
            swept = sweep(conn)
        except BaseException:
            conn.close()
            raise
        if (swept.removed_domains or swept.removed_scratch or swept.pruned_logs
                or swept.removed_saved):
            progress.say(swept.describe())
    try:
        yield Host(conn, choice.accelerator, {**base_versions(), **found,
                                              "accelerator": choice.accelerator.value})
    finally:
        conn.close()


class Guest:
    """A booted guest: its machine, the guest kind, and a session while one is open.

    `hotadd run` boots one and runs one `Attempt` on it. The pytest plugin boots one per
    session, takes a checkpoint (`save`) before any test touched it and `restore`s it for each
    test, since hot-added vCPUs cannot be removed again. All methods run on the caller's thread.
    """

    def __init__(self, spec: ScenarioSpec, kind: GuestKind, host: Host, machine: Machine) -> None:
        self.spec = spec
        self.kind = kind
        self.host = host
        self.machine = machine
        self.session: Session | None = None
        self._saved: Path | None = None
        self.start_info = BOOTED
        self._clock_stale = False  # restored: the guest's wall clock is the saved one

    @classmethod
    @contextlib.contextmanager
    def boot(cls, spec: ScenarioSpec, kind: GuestKind, host: Host, progress: Progress,
             name: str, run_dir: Path) -> Iterator[Guest]:
        """Start the domain (serial.log and domain.xml in `run_dir`); tear it down on exit
        unless `keep()` was called."""
        with contextlib.ExitStack() as owned:
            # From the scratch dir to the teardown registered below, a Ctrl-C waits (it would
            # leave a QEMU or a scratch dir nobody tears down); it is raised at the block's end.
            with interrupts.shielded():
                scratch = storage.run_scratch(name)
                hw = HardwareRequest(name=name, vcpus=spec.vcpu_plan,
                                     accelerator=host.accelerator, run_dir=run_dir,
                                     scratch=scratch, memory_mib=spec.memory_mib,
                                     firmware=spec.firmware)
                try:
                    domain_spec = kind.domain_spec(hw)
                except BaseException:
                    storage.remove_scratch(scratch)
                    raise
                with progress.stage("boot", f"{name} ({spec.vcpu_plan.boot} of "
                                            f"{spec.vcpu_plan.maximum} vCPUs, {spec.topology})"):
                    machine = Machine.start(host.conn, domain_spec, scratch)
                guest = cls(spec, kind, host, machine)
                owned.callback(guest._teardown, progress)
            yield guest

    def _teardown(self, progress: Progress) -> None:
        with interrupts.shielded():  # from the announcement on: a Ctrl-C waits for the end
            if not self.machine.keep:
                progress.say(f"teardown: {self.name}")
            self.close_session()
            self.machine.close()

    @classmethod
    @contextlib.contextmanager
    def start(cls, spec: ScenarioSpec, kind: GuestKind, host: Host, progress: Progress,
              name: str, run_dir: Path) -> Iterator[Guest]:
        """`boot` with `spec.cold`; otherwise restore the saved guest of this hardware
        (`harness.warm`), saving one first if there is none."""
        if spec.cold:
            with cls.boot(spec, kind, host, progress, name, run_dir) as guest:
                guest.start_info = COLD
                yield guest
            return
        with contextlib.ExitStack() as owned:
            # as in `boot`: from the scratch dir to the registered teardown a Ctrl-C waits
            with interrupts.shielded():
                hw = HardwareRequest(name=name, vcpus=spec.vcpu_plan,
                                     accelerator=host.accelerator, run_dir=run_dir,
                                     scratch=storage.run_scratch(name),
                                     memory_mib=spec.memory_mib, firmware=spec.firmware)
                machine, info = owned.enter_context(warm.start(
                    host.conn, kind, hw, host.versions, progress, spec.ready_timeout))
                guest = cls(spec, kind, host, machine)
                guest.start_info = info
                guest._clock_stale = info.warm
                owned.callback(guest._teardown, progress)
            yield guest

    @property
    def name(self) -> str:
        return self.machine.name

    def connect(self, progress: Progress) -> Session:
        """Wait for the guest's transport and open a session (stage "ready")."""
        self.close_session()
        with progress.stage("ready", "the guest's transport"):
            self.session = self.kind.open_session(self.machine, progress, self.spec.ready_timeout)
        if self._clock_stale:
            with progress.stage("clock", "the guest's wall clock"):
                self.session.sync_clock()
            self._clock_stale = False
        return self.session

    def close_session(self) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            session.close()

    def keep(self, progress: Progress) -> None:
        """Leave the guest running when this process lets go of it, for a person to inspect."""
        self.machine.keep = True
        progress.say(f"keeping {self.name} for inspection (serial log "
                     f"{self.machine.spec.serial_log}); 'hotadd sweep' removes it once this "
                     "process has ended")

    def processor_count(self) -> int:
        """Processors the guest OS has online now."""
        if self.session is None:
            raise InputError(f"{self.name} has no open session", "call Guest.connect() first")
        return self.session.processor_count()

    def free_slots(self) -> list[int]:
        """libvirt vCPU ids still free for a hot-add (libvirt's live view)."""
        return sorted(i for i, on in self.machine.vcpu_states().items() if not on)

    # --- checkpoint: the plugin's "known state" without a boot per test -------------------

    @property
    def running(self) -> bool:
        return self.machine.running

    def save(self, path: Path, progress: Progress) -> None:
        """Checkpoint the guest (it stops); every `restore` starts from exactly this state."""
        self.close_session()
        with progress.stage("save", f"{self.name} to {path.name}"):
            self.machine.save(path)
        self._saved = path

    def restore(self, run_dir: Path, progress: Progress) -> None:
        """Start the guest again from the `save`d state, with its serial console (and a copy of
        its live domain XML) in `run_dir`."""
        if self._saved is None:
            raise InputError(f"{self.name} has no saved state", "call Guest.save() first")
        self.close_session()
        with progress.stage("restore", f"{self.name} from {self._saved.name}"):
            self.machine.restore(self._saved, run_dir / "serial.log")
            (run_dir / "domain.xml").write_text(self.machine.dom.XMLDesc(0))
        self._clock_stale = True
        self.start_info = StartInfo(warm=True, note=f"restored {self._saved.name}")

    def stop(self) -> None:
        """Destroy the running domain (its saved state stays for the next `restore`)."""
        self.close_session()
        self.machine.stop()


class Attempt:
    """One probe load on a running guest, step by step: `load`, `add`..., `unload`,
    optionally `add_after_unload`, then `finish` for the verdict. `run()` does what the spec
    says in one go (that is `hotadd run`); the pytest plugin calls the steps itself."""

    def __init__(self, guest: Guest, spec: ScenarioSpec, run_dir: Path,
                 progress: Progress) -> None:
        self.guest = guest
        self.spec = spec
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
            self._boot_count = self.session.processor_count()
        records = parse_records(self.session.live_records().splitlines())
        # the last record was written while the load ran: the load itself is one round trip
        samples = [ClockSample(sent, records[-1].t_ns / 1e9, loaded_at)] if records else []
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
            ost = self.machine.wait_ost(plugged, _left(self.spec.ack_timeout, t0))
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
        if self.spec.adds != len(self.adds) and not self.spec.replay_vetoed:
            # steps taken one by one: judge what was done, not what the spec planned
            self.spec = dataclasses.replace(self.spec, adds=len(self.adds), vcpu_ids=(),
                                            add_after_unload=self.after_unload is not None)
        with self.progress.stage("collect", "the probe's records"):
            text = self.session.final_records()
            (self.run_dir / "records.jsonl").write_text(text)
            final = parse_records(text.splitlines())
        performed = len(self.adds)
        facts = HostFacts(
            adds_performed=performed,
            adds_expected_ok=self.spec.adds_expected_ok if performed == self.spec.adds else None,
            boot_cpus=self._boot_count, guest_count=guest_count)
        verdict = check(final, ORACLE_PROFILES[self.spec.guest], facts)
        if self.own is not None:
            self.own.collect(self.session, ORACLE_PROFILES[self.spec.guest], facts)
        checks = _host_checks(self, qemu.present, qemu.running_cpus, guest_count)
        return self._result(verdict, checks)

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
                exc: HotaddError | None = None) -> RunResult:
        self._close_feed()
        self.progress.timings["total"] = self.progress.elapsed()
        return RunResult(self.spec, self.run_dir, self.guest.name, verdict, tuple(checks),
                         tuple(self.adds), dict(self.progress.timings), dict(self.versions),
                         clock_offset=self.clock_offset, after_unload=self.after_unload,
                         guest=self.guest_facts, start=self.guest.start_info,
                         clock=self.clock, clock_method=self.clock_method,
                         driver=self.own.report() if self.own else None, **_failure(exc))

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
            _left(spec.ack_timeout, t0), tick, pause=lambda seconds: feed.pause(mark, seconds))
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


# --- one run, composed ------------------------------------------------------------------------

def run_scenario(spec: ScenarioSpec, progress: Progress | None = None,
                 kind: GuestKind | None = None) -> RunResult:
    """Run one scenario. Returns a result for pass, verdict failure, and guest crashes alike;
    raises HotaddError only for input errors found before anything started. The run directory
    always ends up with result.json. `kind` overrides the guest kind `spec.guest` names (tests
    pass a reference guest that injects a fault)."""
    progress = progress or Progress()
    domain = run_name(spec.guest.value)
    paths.cache_dir()  # every run needs it (guest, scratch): an unusable one is refused first
    claimed = rundir.claim(spec.run_dir or default_run_dir(domain))
    run_dir = claimed.path
    if claimed.describe():
        progress.say(str(claimed.describe()))
    kind = kind or guest_kind(spec)
    partial: list[RunResult] = []  # the attempt's result when an interrupt cut it short

    def bare(exc: HotaddError | None = None) -> RunResult:
        progress.timings["total"] = progress.elapsed()
        return RunResult(spec, run_dir, domain, None, (), (), dict(progress.timings),
                         base_versions(), **_failure(exc))

    try:
        result = _run(spec, kind, progress, domain, run_dir, partial)
    except HotaddError as exc:
        result = bare(exc)
    except KeyboardInterrupt as exc:  # after the teardown: result.json, then the CLI's message
        cut = Interruption.of(exc, progress)
        done = partial[0] if partial else bare()
        with interrupts.shielded():  # another Ctrl-C must not cost the result
            write_result(dataclasses.replace(done, interrupted=cut, error=cut.describe()))
        raise
    write_result(result)
    return result


def planned_xml(spec: ScenarioSpec) -> str:
    """The domain XML `run_scenario(spec)` would define (`hotadd run --print-xml`): nothing is
    built, started or connected to, and the image and driver need not exist. An explicit
    accelerator is taken as given (the XML for a KVM host can be printed anywhere)."""
    kind = guest_kind(spec)
    accelerator = (accel.kvm_status().accelerator if spec.accelerator is Accelerator.AUTO
                   else spec.accelerator)
    domain = run_name(spec.guest.value)
    hw = HardwareRequest(name=domain, vcpus=spec.vcpu_plan, accelerator=accelerator,
                         run_dir=spec.run_dir or default_run_dir(domain),
                         scratch=storage.scratch_path(domain), memory_mib=spec.memory_mib,
                         firmware=spec.firmware)
    return to_xml(kind.planned_spec(hw))


def _run(spec: ScenarioSpec, kind: GuestKind, progress: Progress, domain: str,
         run_dir: Path, partial: list[RunResult]) -> RunResult:
    with progress.stage("prepare", f"{kind.os.value} guest image"):
        kind.prepare(progress)
        if spec.own_driver is not None:
            spec = dataclasses.replace(spec, own_driver=kind.check_driver(spec.own_driver))
    with open_host(spec, progress) as host, \
            Guest.start(spec, kind, host, progress, domain, run_dir) as guest:
        attempt = Attempt(guest, spec, run_dir, progress)
        try:
            guest.connect(progress)
            result = attempt.run()
        except HotaddError as exc:
            result = attempt.failed(exc)
        except KeyboardInterrupt as exc:
            partial.append(attempt.interrupted(exc))
            raise
        if not result.passed and spec.keep_on_failure and guest.running:
            guest.keep(progress)
        return result


def _failure(exc: HotaddError | None) -> dict[str, Any]:
    """RunResult's error fields for `exc` (a crash is a verdict failure, anything else exit 2)."""
    if exc is None:
        return {}
    if isinstance(exc, GuestCrashed) and not exc.under_test:
        exc.add_note("the guest crashed before the probe was loaded: not a verdict")
    return {
        "error": f"[{exc.stage}] {exc.message}" if exc.stage else exc.message,
        "crashed": _crash_under_test(exc),
        "failed_stage": exc.stage,
        "console_excerpt": exc.excerpt if isinstance(exc, GuestUnhealthy) else None,
    }


def write_result(result: RunResult) -> Path:
    path = result.run_dir / "result.json"
    path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return path


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


def _left(budget: float, since: float) -> float:
    """What is left of `budget` seconds started at monotonic time `since`."""
    return max(budget - (time.monotonic() - since), 0.0)


def _crash_under_test(exc: HotaddError) -> str | None:
    """The crash to report as a verdict, if `exc` is a crash of the guest under test."""
    return str(exc.problem) if isinstance(exc, GuestCrashed) and exc.under_test else None


def _host_checks(attempt: Attempt, qemu_present: int, qemu_running: int,
                 guest_count: int) -> list[HostCheck]:
    spec = attempt.spec
    plan = spec.vcpu_plan
    adds = attempt.adds
    expected_present = plan.boot + len(adds)
    # Linux always answers _OST; whether Windows does is an open question (a warning).
    ost_severity = (Severity.FAIL if ORACLE_PROFILES[spec.guest] is OracleProfile.LINUX
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
    expected_online = plan.boot + (0 if spec.replay_vetoed else spec.adds_expected_ok)
    checks.append(HostCheck(
        "guest.online", Severity.FAIL, guest_count == expected_online,
        f"the guest reports {guest_count} processors online, expected {expected_online}"))
    return checks


def _screenshot(machine: Machine, run_dir: Path) -> None:
    with contextlib.suppress(HotaddError, libvirt.libvirtError):
        machine.screenshot(run_dir / "screenshot.png")

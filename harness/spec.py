"""What a run is asked to do, validated before any VM exists: `ScenarioSpec`, and the guest
kind it names (`harness.guests.registry`), which brings its own settings and oracle profile.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.developer import check_package
from harness.errors import InputError
from harness.guests import registry
from harness.guests.base import DriverPackage, GuestKind, GuestSettings, ProbeSettings
from harness.host import remote
from harness.host.connection import check_uri
from harness.host.domain import Accelerator, Firmware, Topology, VcpuPlan
from harness.host.machine import HotplugMethod

NTSTATUS_ERROR_MIN = 0x8000_0000  # the lowest 32-bit status with NT_SUCCESS false


@dataclass(frozen=True)
class ScenarioSpec:
    """Everything a run needs to know, validated before any VM exists."""

    guest: str = registry.DEFAULT  # a guest kind's name (harness.guests.registry)
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
    #: the guest kind's own settings (its `settings_type`, e.g. Windows' image and driver);
    #: the bare GuestSettings() stands for the kind's defaults, which the spec then holds
    guest_settings: GuestSettings = field(default_factory=GuestSettings)
    cold: bool = False  # boot, even if a saved guest could be restored (harness.warm)
    own_driver: DriverPackage | None = None  # a developer's driver beside the probe
    load_during_adds: bool = False  # plug every add, then load while they are in flight

    def __post_init__(self) -> None:
        # a frozen dataclass sets its own derived field this way (dataclasses docs, __post_init__)
        object.__setattr__(self, "guest_settings",
                           registry.settings_for(self.kind_class, self.guest_settings))
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
        self._check_load_during_adds()

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
        self.kind_class.check_probe(probe)  # what this guest's probe can do, before any boot

    def _check_guest_options(self) -> None:
        if self.memory_mib is not None and self.memory_mib < 1:
            raise InputError(f"--memory {self.memory_mib} MiB is no memory at all",
                             "give the guest memory in MiB, e.g. --memory 1024, or leave it out")
        for name, value in (("--ready-timeout", self.ready_timeout),
                            ("--ack-timeout", self.ack_timeout)):
            if not value > 0:
                raise InputError(f"{name} {value} must be greater than 0 seconds",
                                 f"give {name} in seconds, e.g. 60")
        if self.libvirt_uri is not None:
            check_uri(self.libvirt_uri)
            remote.check_run(self.libvirt_uri)
        if self.own_driver is not None:
            check_package(self.kind_class, self.own_driver)

    def _check_load_during_adds(self) -> None:
        """What --load-during-adds cannot honour: its adds must exist, each must be seen
        somewhere, and the outcome must not hang on which side of the register call an add
        lands (docs/oracle-rules.md, "Loading while adds are in flight")."""
        if not self.load_during_adds:
            return
        option = "--load-during-adds"
        if self.adds < 1:
            raise InputError(f"{option} with no add: nothing is in flight during the load",
                             f"give --adds N (at least 1), or leave {option} out")
        if not self.probe.add_existing:
            raise InputError(
                f"{option} with --no-add-existing: an add that comes online before the "
                "register call is then seen nowhere, and no record says how many did, so the "
                "adds cannot be judged", f"drop --no-add-existing or {option}")
        veto = self.probe.veto_index
        if veto is not None:
            raise InputError(
                f"{option} with --veto-cpu {veto}: " + (
                    "a replay veto fails the register call, so no add in flight could be seen"
                    if veto < self.boot_vcpus else
                    f"whether processor {veto} comes online before the register call (its "
                    "replay Start is vetoed and registration fails) or after it (a hot-add "
                    "veto) depends on timing, not on the options"),
                f"drop --veto-cpu or {option}")

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
    def kind_class(self) -> type[GuestKind]:
        """The guest kind `guest` names (its declarations; `guest_kind` builds one)."""
        return registry.get(self.guest)

    @property
    def vcpu_plan(self) -> VcpuPlan:
        return VcpuPlan(self.topology, boot=self.boot_vcpus)

    @property
    def adds_expected_ok(self) -> int:
        """Adds the guest should complete: all but one whose expected index is vetoed."""
        return self.expected_ok(self.adds)

    def expected_ok(self, adds: int) -> int:
        """Of `adds` hot-adds (the plan's, or what a test driving the steps made), those the
        guest should complete. Hot-added processors get the next free index (boot, boot+1,
        ...), so a veto index in that range names exactly one add.
        """
        veto = self.probe.veto_index
        vetoed = veto is not None and self.boot_vcpus <= veto < self.boot_vcpus + adds
        return adds - (1 if vetoed else 0)

    @property
    def replay_vetoed(self) -> bool:
        veto = self.probe.veto_index
        return self.probe.add_existing and veto is not None and veto < self.boot_vcpus


def spec_dict(spec: ScenarioSpec) -> dict[str, Any]:
    """The spec as plain JSON values (result.json's `scenario`): the guest's settings by
    name in the spec's own place (Windows' `image` and `driver`, as before the registry)."""
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

    out: dict[str, Any] = {}
    for key, value in plain(spec).items():
        out |= value if key == "guest_settings" else {key: value}
    return out


def guest_kind(spec: ScenarioSpec) -> GuestKind:
    """The guest kind that runs `spec.guest`, with the spec's settings."""
    return spec.kind_class.from_settings(spec.guest_settings)

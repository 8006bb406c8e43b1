"""A guest's hardware as a typed spec, and the libvirt domain XML it becomes.

The spec is validated before libvirt ever sees it, so an impossible topology is an input error
naming the fix, not a libvirt message. Policy (what a Windows or Linux guest gets) lives in
`profile_devices()`; the element builders below only translate. Design after OpenStack
nova's `nova.virt.libvirt.config` + `designer` modules and virt-manager's `vcpus` module.
"""

from __future__ import annotations

import enum
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import InputError

METADATA_NS = "https://hotadd.invalid/xmlns/run/1"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
NAME_PREFIX = "hotadd-"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


class Firmware(enum.Enum):
    BIOS = "bios"
    UEFI = "uefi"  # OVMF without Secure Boot: test-signed drivers need Secure Boot off


class Accelerator(enum.Enum):
    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


class GuestOS(enum.Enum):
    """The hardware flavour of a guest's domain; each guest kind names its own (`GuestKind.os`;
    the kinds themselves, by name, are in `harness.guests.registry`)."""

    REFERENCE = "reference"  # Linux: pvpanic, virtio-net, virtio disks, direct kernel boot
    WINDOWS = "windows"  # Hyper-V enlightenments, Hyper-V crash MSRs, e1000e, SATA disks


class DiskBus(enum.Enum):
    VIRTIO = "virtio"
    SATA = "sata"


#: Largest vCPU count the harness accepts, and the largest APIC ID a guest without x2APIC and
#: interrupt remapping can address (xAPIC IDs are 8 bits and 0xFF is the broadcast ID; QEMU
#: 7.2's userspace APIC refuses IDs >= 255: "APIC ID %d is invalid" in hw/intc/apic.c,
#: https://gitlab.com/qemu-project/qemu/-/blob/v7.2.0/hw/intc/apic.c).
MAX_VCPUS = 255
MAX_APIC_ID = 254


@dataclass(frozen=True)
class Topology:
    sockets: int = 1
    dies: int = 1
    cores: int = 4
    threads: int = 1

    def __post_init__(self) -> None:
        for name in ("sockets", "dies", "cores", "threads"):
            if getattr(self, name) < 1:
                raise InputError(f"topology {name} must be >= 1 (got {getattr(self, name)})",
                                 "give every topology field a positive count")

    @property
    def total(self) -> int:
        return self.sockets * self.dies * self.cores * self.threads

    def __str__(self) -> str:
        return f"{self.sockets}s x {self.dies}d x {self.cores}c x {self.threads}t"

    def slot(self, index: int) -> TopoIds:
        """Where vCPU `index` sits. libvirt's vCPU ids are QEMU's CPU indexes, which QEMU
        lays out thread-fastest (x86_topo_ids_from_idx() in QEMU's include/hw/i386/topology.h,
        https://gitlab.com/qemu-project/qemu/-/blob/v7.2.0/include/hw/i386/topology.h)."""
        if not 0 <= index < self.total:
            raise InputError(f"vCPU {index} is not in topology {self} (0..{self.total - 1})",
                             "choose a vCPU id below sockets*dies*cores*threads")
        return TopoIds(socket=index // (self.dies * self.cores * self.threads),
                       die=index // (self.cores * self.threads) % self.dies,
                       core=index // self.threads % self.cores,
                       thread=index % self.threads)

    def apic_id(self, index: int) -> int:
        """The initial APIC ID QEMU gives vCPU `index`: each level gets ceil(log2(count)) bits
        (x86_apicid_from_topo_ids() in the same QEMU header), so counts that are not powers of
        two leave unused APIC IDs between sockets, dies and cores."""
        ids = self.slot(index)
        thread_bits, core_bits, die_bits = (_width(self.threads), _width(self.cores),
                                            _width(self.dies))
        return (ids.socket << (die_bits + core_bits + thread_bits)
                | ids.die << (core_bits + thread_bits) | ids.core << thread_bits | ids.thread)

    @property
    def max_apic_id(self) -> int:
        return self.apic_id(self.total - 1)


def _width(count: int) -> int:
    """Bits QEMU reserves in the APIC ID for `count` items (apicid_bitwidth_for_count())."""
    return (count - 1).bit_length()


@dataclass(frozen=True)
class TopoIds:
    """A vCPU's place in the topology, as QEMU's query-hotpluggable-cpus reports it."""

    socket: int
    die: int
    core: int
    thread: int


@dataclass(frozen=True)
class VcpuPlan:
    """Boot vCPUs and max vCPUs on a topology; vCPU 0 is always present and never hot-plugged."""

    topology: Topology
    boot: int
    max: int | None = None  # defaults to topology.total

    def __post_init__(self) -> None:
        maximum = self.max if self.max is not None else self.topology.total
        if maximum != self.topology.total:
            raise InputError(
                f"max vCPUs {maximum} != topology {self.topology} = {self.topology.total} vCPUs",
                "make sockets*dies*cores*threads equal the max vCPU count",
            )
        if not 1 <= self.boot <= maximum:
            raise InputError(f"boot vCPUs {self.boot} must be between 1 and max {maximum}",
                             "choose 1 <= boot vCPUs <= max vCPUs")
        if maximum > MAX_VCPUS:
            raise InputError(f"{maximum} vCPUs is more than this harness supports "
                             f"({MAX_VCPUS})", "use a smaller topology")
        if self.topology.max_apic_id > MAX_APIC_ID:
            raise InputError(
                f"topology {self.topology} gives its last vCPU APIC ID "
                f"{self.topology.max_apic_id}: QEMU rounds every level up to a power of two, "
                f"and without x2APIC + interrupt remapping APIC IDs stop at {MAX_APIC_ID}",
                "use power-of-two core/thread/die counts, or fewer sockets")

    @property
    def maximum(self) -> int:
        return self.topology.total

    @property
    def hotpluggable(self) -> int:
        return self.maximum - self.boot


@dataclass(frozen=True)
class DirectBoot:
    """Kernel + initramfs booted by QEMU itself (the reference guest has no disk)."""

    kernel: Path
    initrd: Path
    cmdline: str


@dataclass(frozen=True)
class Disk:
    path: Path  # an overlay the run owns (see harness.host.storage)
    bus: DiskBus = DiskBus.VIRTIO
    readonly: bool = False


@dataclass(frozen=True)
class Cdrom:
    path: Path


@dataclass(frozen=True)
class Forward:
    """A TCP forward from 127.0.0.1:host_port to the guest's guest_port (never another address).

    host_port 0 (the default): QEMU's user-mode network binds a port the kernel picks when QEMU
    starts, so nothing can take it between a choice and QEMU's bind, as a port found free
    beforehand could be; `Machine.forwarded_port()` says which port it got."""

    guest_port: int
    host_port: int = 0


@dataclass(frozen=True)
class DomainSpec:
    """Everything that decides the guest's virtual hardware for one run."""

    name: str
    vcpus: VcpuPlan
    guest_os: GuestOS
    serial_log: Path
    memory_mib: int = 512
    firmware: Firmware = Firmware.BIOS
    accelerator: Accelerator = Accelerator.TCG  # resolve AUTO with harness.host.accel first
    nvram: Path | None = None  # per-run copy of OVMF_VARS (UEFI only)
    direct_boot: DirectBoot | None = None
    disks: tuple[Disk, ...] = ()
    cdroms: tuple[Cdrom, ...] = ()
    forwards: tuple[Forward, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    vnc: bool = False  # the screen on a VNC port libvirt picks, on 127.0.0.1 only
    #: only to be printed (--print-xml): its input files need not exist, nothing starts it
    planned: bool = field(default=False, compare=False)
    #: its paths name files on a remote libvirt host (harness.host.remote): not checked here
    remote: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name.startswith(NAME_PREFIX):
            raise InputError(f"domain name {self.name!r} lacks the {NAME_PREFIX!r} run prefix",
                             "build names with harness.host.machine.run_name()")
        if self.memory_mib < 64:
            raise InputError(f"memory {self.memory_mib} MiB is too small", "give at least 64 MiB")
        if self.accelerator is Accelerator.AUTO:
            raise InputError("the accelerator must be resolved before building a domain",
                             "call harness.host.accel.resolve() first")
        if self.firmware is Firmware.UEFI and self.nvram is None:
            raise InputError("UEFI firmware needs a per-run NVRAM file",
                             "create one with harness.host.storage.nvram_copy()")
        if self.direct_boot is None and not self.disks and not self.cdroms:
            raise InputError("the guest has nothing to boot from",
                             "give a kernel/initrd, a disk image or an ISO")
        for path in [] if self.planned or self.remote else self.input_files():
            if not path.exists():
                raise InputError(f"{path} does not exist",
                                 "build or download it first (see README), or fix the path")

    def input_files(self) -> list[Path]:
        """Files QEMU must be able to open (disks, ISOs, kernel/initrd)."""
        files = [d.path for d in self.disks] + [c.path for c in self.cdroms]
        if self.direct_boot:
            files += [self.direct_boot.kernel, self.direct_boot.initrd]
        return files


# --- element builders: translation only, no policy -------------------------------------------

def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def _vcpus(root: ET.Element, plan: VcpuPlan) -> None:
    _sub(root, "vcpu", str(plan.maximum), placement="static", current=str(plan.boot))
    vcpus = _sub(root, "vcpus")
    for i in range(plan.maximum):
        online = i < plan.boot
        # Boot vCPUs are cold-plugged (like a real board); only the others are hot-pluggable.
        _sub(vcpus, "vcpu", id=str(i), enabled="yes" if online else "no",
             hotpluggable="no" if online else "yes")


def _cpu(root: ET.Element, spec: DomainSpec) -> None:
    if spec.accelerator is Accelerator.KVM:
        cpu = _sub(root, "cpu", mode="host-passthrough", check="none")
    else:
        cpu = _sub(root, "cpu", mode="custom", match="exact", check="none")
        _sub(cpu, "model", "qemu64", fallback="allow")
    t = spec.vcpus.topology
    _sub(cpu, "topology", sockets=str(t.sockets), dies=str(t.dies), cores=str(t.cores),
         threads=str(t.threads))
    for name in hidden_cpu_features(spec.guest_os):
        _sub(cpu, "feature", policy="disable", name=name)


def _os(root: ET.Element, spec: DomainSpec) -> None:
    os_el = _sub(root, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine="q35")
    if spec.firmware is Firmware.UEFI:
        assert spec.nvram is not None
        _sub(os_el, "loader", str(OVMF_CODE), readonly="yes", secure="no", type="pflash")
        _sub(os_el, "nvram", str(spec.nvram), template=str(OVMF_VARS))
    if spec.direct_boot:
        _sub(os_el, "kernel", str(spec.direct_boot.kernel))
        _sub(os_el, "initrd", str(spec.direct_boot.initrd))
        _sub(os_el, "cmdline", spec.direct_boot.cmdline)
    for dev in ("cdrom", "hd") if spec.cdroms else ("hd",):
        _sub(os_el, "boot", dev=dev)


def _features(root: ET.Element, spec: DomainSpec) -> None:
    feats = _sub(root, "features")
    _sub(feats, "acpi")
    _sub(feats, "apic")
    if spec.guest_os is GuestOS.WINDOWS:
        hv = _sub(feats, "hyperv", mode="custom")
        for name in hyperv_enlightenments(spec.accelerator):
            if name == "spinlocks":
                _sub(hv, name, state="on", retries="8191")
            else:
                _sub(hv, name, state="on")


def _disks(devices: ET.Element, spec: DomainSpec) -> None:
    letters = iter("abcdefghijklmnop")
    for disk in spec.disks:
        prefix = "vd" if disk.bus is DiskBus.VIRTIO else "sd"
        el = _sub(devices, "disk", type="file", device="disk")
        _sub(el, "driver", name="qemu", type="qcow2")
        _sub(el, "source", file=str(disk.path))
        _sub(el, "target", dev=prefix + next(letters), bus=disk.bus.value)
        if disk.readonly:
            _sub(el, "readonly")
    for cd in spec.cdroms:
        el = _sub(devices, "disk", type="file", device="cdrom")
        _sub(el, "driver", name="qemu", type="raw")
        _sub(el, "source", file=str(cd.path))
        _sub(el, "target", dev="sd" + next(letters), bus="sata")
        _sub(el, "readonly")


def _serial(devices: ET.Element, spec: DomainSpec) -> None:
    """A pty serial port: hotadd reads it through libvirt's console stream into
    `spec.serial_log` (`harness.host.console.ConsoleStream`), on a local or a remote host alike.
    libvirt's QEMU driver opens a console only on a pty ("character device ... is not using a
    PTY", qemuDomainOpenConsole; https://libvirt.org/formatdomain.html#consoles-serial-parallel-channel-devices)."""
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "target", port="0")


# QEMU may create passthrough devices before libvirt's own, so the NIC needs a slot libvirt
# never assigns on q35 (it uses 0x1 for video, 0x2.. for root ports, 0x1b-0x1f for ICH9 parts).
NIC_SLOT = "0x10"


def _qemu_netdev(root: ET.Element, spec: DomainSpec) -> None:
    """User-mode NIC with loopback-only forwards, passed through as QEMU arguments.

    libvirt 9.0's own <portForward> needs passt (broken on Debian 12); the passthrough is the
    checked way, at the price of a "custom-argv" taint. `restrict=on` keeps the guest from
    reaching anything but the forwards: it never leaves loopback.
    """
    if not spec.forwards:
        return
    cmd = ET.SubElement(root, f"{{{QEMU_NS}}}commandline")
    for arg in qemu_netdev_args(spec):
        ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", value=arg)


def qemu_netdev_args(spec: DomainSpec) -> tuple[str, ...]:
    """The QEMU arguments of the user-mode NIC. The host ports live only here, on QEMU's
    command line, not in a saved memory state: a restore may give new ones (`harness.warm`)."""
    fwds = ",".join(f"hostfwd=tcp:127.0.0.1:{f.host_port}-:{f.guest_port}" for f in spec.forwards)
    model = "e1000e" if spec.guest_os is GuestOS.WINDOWS else "virtio-net-pci"
    return ("-netdev", f"user,id=hotaddnet0,restrict=on,{fwds}",
            "-device", f"{model},netdev=hotaddnet0,bus=pcie.0,addr={NIC_SLOT}")


def _graphics(devices: ET.Element, spec: DomainSpec) -> None:
    """A VNC display on 127.0.0.1 (never another address), port chosen by libvirt."""
    if not spec.vnc:
        return
    graphics = _sub(devices, "graphics", type="vnc", autoport="yes", listen="127.0.0.1")
    _sub(graphics, "listen", type="address", address="127.0.0.1")


def _metadata(root: ET.Element, spec: DomainSpec) -> None:
    md = _sub(root, "metadata")
    ET.SubElement(md, f"{{{METADATA_NS}}}run", dict(sorted(spec.metadata.items())))


# --- policy ----------------------------------------------------------------------------------

def hyperv_enlightenments(accel: Accelerator) -> tuple[str, ...]:
    """Hyper-V enlightenments QEMU accepts on this accelerator. Never empty: QEMU sets the
    Hyper-V "dynamic partitioning available" CPUID bit only when some enlightenment is on, and
    without it Windows lists hot-added CPUs in Device Manager but never schedules on them
    (cloud-hypervisor #1799; QEMU "hyperv: cpu hotplug fix with HyperV enabled").

    vpindex (and synic/stimer, which need it) make QEMU refuse to start under TCG; a real KVM
    host takes them and Windows runs much better with them.
    """
    base = ("relaxed", "vapic", "spinlocks", "reset", "frequencies")
    if accel is Accelerator.KVM:
        return (*base, "vpindex", "runtime", "synic", "stimer")
    return base


#: CPU features a Windows guest must not see (host-passthrough would pass them on).
#: vmx/svm: nested virtualisation lets Windows turn on virtualization-based security (VBS),
#: which is not supported together with CPU hot-add. sgx/sgxlc: OVMF without SMM CPU hot-plug
#: never sets IA32_FEATURE_CONTROL on a hot-added CPU, and Windows guests with SGX exposed
#: crashed on CPU hot-add (tianocore/edk2 issue 11188; the fix is in the SMM path only).
WINDOWS_HIDDEN_CPU_FEATURES = ("vmx", "svm", "sgx", "sgxlc")


def hidden_cpu_features(guest_os: GuestOS) -> tuple[str, ...]:
    """Features disabled in the guest CPU for this guest, whatever the accelerator."""
    return WINDOWS_HIDDEN_CPU_FEATURES if guest_os is GuestOS.WINDOWS else ()


def profile_devices(devices: ET.Element, spec: DomainSpec) -> None:
    """Devices that depend on the guest flavour: how a crash is reported."""
    if spec.guest_os is GuestOS.WINDOWS:
        _sub(devices, "panic", model="hyperv")  # crash MSRs: bugcheck code + 4 parameters
    else:
        panic = _sub(devices, "panic", model="isa")  # pvpanic
        _sub(panic, "address", type="isa", iobase="0x505")


def to_xml(spec: DomainSpec, emulator: str | None = None) -> str:
    """The domain XML for `spec` (a transient domain; the harness never persists definitions)."""
    ET.register_namespace("qemu", QEMU_NS)
    ET.register_namespace("hotadd", METADATA_NS)
    root = ET.Element("domain", type="kvm" if spec.accelerator is Accelerator.KVM else "qemu")
    _sub(root, "name", spec.name)
    _metadata(root, spec)
    _sub(root, "memory", str(spec.memory_mib), unit="MiB")
    _vcpus(root, spec.vcpus)
    _os(root, spec)
    _features(root, spec)
    _cpu(root, spec)
    # UTC for both: the answer file sets Windows' time zone to UTC, so its RTC reads UTC too
    clock = _sub(root, "clock", offset="utc")
    if spec.guest_os is GuestOS.WINDOWS and spec.accelerator is Accelerator.KVM:
        _sub(clock, "timer", name="hypervclock", present="yes")
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "preserve")  # keep the crashed guest for the screenshot and MSRs
    devices = _sub(root, "devices")
    _sub(devices, "emulator", emulator or default_emulator())
    _disks(devices, spec)
    _serial(devices, spec)
    _graphics(devices, spec)
    video = _sub(devices, "video")  # screenshots need a display device
    _sub(video, "model", type="vga")
    _sub(devices, "memballoon", model="none")
    profile_devices(devices, spec)
    _qemu_netdev(root, spec)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode")


def default_emulator() -> str:
    for candidate in ("/usr/bin/qemu-system-x86_64", "/usr/libexec/qemu-kvm"):
        if os.access(candidate, os.X_OK):
            return candidate
    return "/usr/bin/qemu-system-x86_64"

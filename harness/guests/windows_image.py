"""`hotadd image build`: Windows Server installed unattended into a read-only golden qcow2.

The flow, stage by stage: read install.wim and pick the image, build the provisioning ISO
(`windows_setup`), create the disk, boot the installer domain (Windows ISO, provisioning ISO,
SATA disk, WinRM forwarded to 127.0.0.1), press a key for the ISO's boot prompt until Setup
writes the disk, wait for WinRM and the provisioning reboot, verify with the preflight
(`windows_control`), power off, and write the image read-only with its JSON manifest (no
secrets) beside it.

A broken install shows in minutes, not after the whole budget: until WinRM answers, the target
disk must keep growing (a missed key press leaves OVMF at its shell, a page Setup stops at
writes nothing), or the build stops after `stall` seconds. Screenshots are saved every few
seconds into the run directory, `--vnc` shows the screen on 127.0.0.1, and a failed stage
names itself, the last screenshot and the serial log.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import libvirt

from harness import __version__
from harness.errors import (
    DomainError,
    GuestNotReady,
    HotaddError,
    InfrastructureError,
    InputError,
    TransportError,
)
from harness.guests.windows_control import (
    PROVISION_LOG,
    VbsStatus,
    preflight,
    wait_provisioned,
)
from harness.guests.windows_setup import (
    PROVISION_LABEL,
    ImageSelector,
    UnattendSettings,
    WimImage,
    WindowsVersion,
    build_iso,
    check_edition,
    check_licence,
    check_readable_iso,
    run_tool,
    stage_provisioning,
    windows_iso_images,
)
from harness.host import accel, storage
from harness.host.connection import default_uri, open_connection
from harness.host.domain import (
    OVMF_VARS,
    Accelerator,
    Cdrom,
    Disk,
    DiskBus,
    DomainSpec,
    Firmware,
    Forward,
    GuestOS,
    Topology,
    VcpuPlan,
    to_xml,
)
from harness.host.machine import Machine, check_system_qemu_can_reach, run_name
from harness.host.sweep import sweep
from harness.host.target import is_remote_uri
from harness.progress import Progress, throttled
from harness.transport.winrm import WinRMEndpoint, WinRMTransport

ADMIN_USER = "Administrator"
#: hotadd-provision.ps1 steps without which the image is useless; others only warn.
CRITICAL_STEPS = frozenset({"test signing", "winrm", "local account token filter",
                            "server 2016 ACPI0010 workaround"})


@dataclass(frozen=True)
class StageTimeouts:
    """Seconds per image-build stage (KVM figures; TCG would need hours)."""

    stall: float = 600.0  # the disk not growing, from the start until WinRM answers
    install: float = 5400.0  # Setup, reboots, first logon, provisioning, WinRM up
    provision: float = 1200.0  # provisioning after WinRM came up (its first step), its reboot
    verify: float = 300.0
    shutdown: float = 600.0
    winrm_read: int = 30  # HTTP read timeout of one WinRM request (a silent guest costs this)


@dataclass(frozen=True)
class ImageBuildSpec:
    """Inputs of `hotadd image build`."""

    windows_iso: Path
    virtio_iso: Path
    image: ImageSelector
    output: Path
    password: str = field(repr=False)
    product_key: str | None = field(default=None, repr=False)  # None: evaluation media
    firmware: Firmware = Firmware.UEFI
    disk_gib: int = 40
    memory_mib: int = 4096
    vcpus: int = 2
    force_tcg: bool = False
    libvirt_uri: str | None = None
    run_dir: Path | None = None  # logs, screenshots; default: <output>.build/
    timeouts: StageTimeouts = field(default_factory=StageTimeouts)
    screenshot_every: float = 30.0  # seconds between screenshots into <logs>/screens/
    vnc: bool = False  # offer the screen on a VNC port of 127.0.0.1

    def __post_init__(self) -> None:
        if self.timeouts.stall <= 0 or self.screenshot_every <= 0:
            raise InputError("--stall-timeout and --screenshot-every must be positive seconds",
                             "e.g. --stall-timeout 600 --screenshot-every 30")
        if self.disk_gib < 32:
            raise InputError(f"disk size {self.disk_gib} GiB is too small for Windows Server",
                             "give at least 32 GiB (--disk-gib)")
        if self.output.exists():
            raise InputError(f"{self.output} already exists (golden images are never "
                             "overwritten)", "choose another --output or remove the old image")
        if not self.output.parent.is_dir():
            raise InputError(f"the output directory {self.output.parent} does not exist",
                             "create it first")
        if is_remote_uri(self.libvirt_uri):
            raise InputError(f"--libvirt-uri {self.libvirt_uri} is a remote host: building a "
                             "golden image there is not supported (the ISOs, the provisioning "
                             "media and the new disk would all have to live on that host)",
                             "build the image on the KVM host itself (qemu:///system or the "
                             "default), then run scenarios on it")

    @property
    def logs(self) -> Path:
        return self.run_dir or self.output.with_name(self.output.name + ".build")


@dataclass(frozen=True)
class GoldenManifest:
    """What a golden image is, stored beside it as <image>.json (no secrets)."""

    image: str
    windows_version: str
    edition: str
    image_index: int
    build: int | None
    firmware: str
    disk_bus: str
    nvram: str | None
    user: str
    winrm_port: int
    created_utc: str
    hotadd: dict[str, Any]
    source_iso: str
    virtio_iso: str
    provisioning: dict[str, str] = field(default_factory=dict)  # step -> "ok" / "failed: ..."
    hotadd_version: str = __version__
    schema: str = "hotadd.windows-image/1"

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> GoldenManifest:
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise InputError(f"cannot read the image manifest {path}: {exc}",
                             "rebuild the image with 'hotadd image build'") from None


def manifest_path(image: Path) -> Path:
    return image.with_name(image.name + ".json")


def nvram_path(image: Path) -> Path:
    return image.with_name(image.name + ".OVMF_VARS.fd")


def check_accelerator(force_tcg: bool) -> tuple[Accelerator, str]:
    """KVM, or TCG only when forced (Windows Setup under TCG takes many hours)."""
    status = accel.kvm_status()
    if status.accelerator is Accelerator.KVM:
        return Accelerator.KVM, status.reason
    if not force_tcg:
        raise InputError(f"no usable KVM: {status.reason}; installing Windows under TCG "
                         "emulation takes many hours",
                         "build the image on a KVM host, or pass --force-tcg to try anyway")
    return Accelerator.TCG, f"forced TCG ({status.reason})"


def allocated_bytes(path: Path) -> int:
    """Bytes the file takes on disk: a qcow2 file grows only when the guest writes new data."""
    try:
        return path.stat().st_blocks * 512
    except OSError:
        return 0


class DiskWatch:
    """Is Windows Setup writing the target disk? Sampled from the qcow2 file's allocated
    size, which grows as Setup partitions, applies the image, and Windows first boots."""

    def __init__(self, allocated: Callable[[], int], stall: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._allocated = allocated
        self._clock = clock
        self.stall = stall
        self.size = allocated()
        self.written = False  # the disk has grown since the VM started
        self.last_growth = clock()

    def sample(self) -> None:
        size = self._allocated()
        if size > self.size:
            self.size, self.written, self.last_growth = size, True, self._clock()

    def check(self) -> None:
        """Raise GuestNotReady when the disk has not grown for `stall` seconds."""
        self.sample()
        if self._clock() - self.last_growth <= self.stall:
            return
        if not self.written:
            raise GuestNotReady(
                f"Windows Setup wrote nothing to the disk in {self.stall:.0f}s: the ISO's "
                "'press any key' prompt was missed (OVMF shell or boot manager on screen), "
                "or Setup stopped at a page before partitioning (product key, an error)",
                "look at the screenshot; watch the next try with --vnc; on a slow host raise "
                "--stall-timeout")
        raise GuestNotReady(
            f"the disk stopped growing: nothing new written for {self.stall:.0f}s "
            f"(at {self.size / 2**30:.2f} GiB) and WinRM does not answer",
            "look at the screenshot (Setup error, a page waiting for input, a hung "
            "provisioning step); watch the next try with --vnc; on a slow host raise "
            "--stall-timeout")


class Screenshots:
    """Saves the installer's screen every `every` seconds into `folder` (a daemon thread), so
    a failure can be followed back; `last` is the newest saved."""

    def __init__(self, shoot: Callable[[Path], Path | None], folder: Path, every: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._shoot = shoot
        self.folder = folder
        self.every = every
        self._clock = clock
        self._t0 = clock()
        self._count = 0
        self.last: Path | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def take(self, label: str | None = None) -> Path | None:
        """One screenshot now, numbered in order; None if there was nothing to show. Called
        by the thread and, at a failure, by the flow: one at a time."""
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._count += 1
            name = f"{self._count:04d}-{label or f'{self._clock() - self._t0:06.0f}s'}.png"
            try:
                shot = self._shoot(self.folder / name)
            except Exception:  # the domain went away between two shots: nothing to save
                shot = None
            if shot is not None:
                self.last = shot
            return shot

    def start(self) -> None:
        def run() -> None:
            while not self._stop.wait(self.every):
                self.take()

        self._thread = threading.Thread(target=run, name="hotadd-screenshots", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def final(self, label: str) -> Path | None:
        """The failure's screenshot, taken after the periodic thread stops so that it is the
        last file in the folder (a periodic shot after it would be mistaken for the end)."""
        self.stop()
        return self.take(label) or self.last


class Installer:
    """The installer VM, seen by the build flow. Wraps harness.host.machine.Machine so the
    flow reads as stages and tests can see exactly what it asks of the host layer."""

    def __init__(self, machine: Machine, conn: libvirt.virConnect, disk: Path) -> None:
        self.machine = machine
        self.conn = conn
        self.disk = disk

    def press_key(self) -> None:
        """Press space: the Windows ISO's UEFI loader waits for "any key" for a few seconds and
        otherwise falls through to the empty disk (and OVMF's shell)."""
        try:
            self.machine.dom.sendKey(libvirt.VIR_KEYCODE_SET_LINUX, 50, [57], 1, 0)
        except libvirt.libvirtError as exc:
            raise DomainError(f"could not press a key in the installer VM: "
                              f"{exc.get_error_message()}",
                              "check the domain has a keyboard (hotadd doctor)") from exc

    def disk_allocated(self) -> int:
        return allocated_bytes(self.disk)

    def screenshot(self, path: Path) -> Path | None:
        return self.machine.screenshot(path)

    def winrm_port(self) -> int:
        """The host port QEMU forwards to the installer's WinRM (it picked it: `Forward`)."""
        return self.machine.forwarded_port(WINRM_GUEST_PORT)

    def vnc_port(self) -> int | None:
        """The VNC port libvirt picked (autoport), from the live domain XML."""
        root = ET.fromstring(self.machine.dom.XMLDesc(0))
        port = root.find("./devices/graphics[@type='vnc']")
        return int(port.get("port", "-1")) if port is not None else None

    def is_running(self) -> bool:
        try:
            return bool(self.machine.dom.isActive())
        except Exception:  # libvirt: the transient domain is gone once it powered off
            return False

    def close(self) -> None:
        self.machine.close()
        self.conn.close()


def start_installer(spec: ImageBuildSpec, accelerator: Accelerator, disk: Path, prov_iso: Path,
                    nvram: Path | None) -> Installer:
    """Boot the installer domain: Windows ISO first, provisioning ISO, the new disk (SATA:
    Windows' inbox AHCI driver, so booting never depends on virtio drivers)."""
    conn = open_connection(spec.libvirt_uri)
    try:
        sweep(conn)
        name = run_name("winimage")
        scratch = storage.run_scratch(name)
        dom_spec = installer_spec(spec, name, accelerator, disk, prov_iso, nvram)
        return Installer(Machine.start(conn, dom_spec, scratch), conn, disk)
    except BaseException:
        conn.close()
        raise


def installer_spec(spec: ImageBuildSpec, name: str, accelerator: Accelerator, disk: Path,
                   prov_iso: Path, nvram: Path | None, planned: bool = False) -> DomainSpec:
    """The installer domain: Windows ISO first, provisioning ISO, the new disk on SATA."""
    return DomainSpec(
        name=name, guest_os=GuestOS.WINDOWS,
        vcpus=VcpuPlan(Topology(sockets=1, dies=1, cores=spec.vcpus), boot=spec.vcpus),
        serial_log=spec.logs / "serial.log", memory_mib=spec.memory_mib,
        firmware=spec.firmware, accelerator=accelerator, nvram=nvram,
        disks=(Disk(disk, bus=DiskBus.SATA),),
        cdroms=(Cdrom(spec.windows_iso.resolve()), Cdrom(prov_iso)),
        forwards=(Forward(guest_port=WINRM_GUEST_PORT),),
        metadata={"purpose": "windows image build"}, vnc=spec.vnc, planned=planned,
    )


def planned_installer_xml(spec: ImageBuildSpec) -> str:
    """The installer domain XML `build_image(spec)` would define (`--print-xml`): no ISO is
    read, nothing created or started; KVM unless the spec forces TCG."""
    accelerator = Accelerator.TCG if spec.force_tcg else Accelerator.KVM
    work = spec.output.parent / ".hotadd-image-PLANNED"
    nvram = work / "OVMF_VARS.fd" if spec.firmware is Firmware.UEFI else None
    return to_xml(installer_spec(spec, run_name("winimage"), accelerator,
                                 spec.output.with_name(spec.output.name + ".partial"),
                                 work / "provision.iso", nvram, planned=True))


#: WinRM over HTTP, which the provisioning enables in the guest.
WINRM_GUEST_PORT = 5985

InstallerFactory = Callable[[ImageBuildSpec, Accelerator, Path, Path, "Path | None"], Installer]


def build_image(spec: ImageBuildSpec, progress: Progress,
                start: InstallerFactory = start_installer) -> GoldenManifest:
    """Install Windows unattended into a new read-only golden qcow2 with a JSON manifest."""
    check_readable_iso(spec.windows_iso, "Windows ISO")
    check_readable_iso(spec.virtio_iso, "virtio-win ISO")
    # QEMU opens the Windows ISO, and the disk, NVRAM and provisioning ISO made beside the
    # output; under qemu:///system it runs as another user: say so before any work is done.
    check_system_qemu_can_reach(spec.libvirt_uri or default_uri(),
                                [spec.windows_iso, spec.output])
    accelerator, why = check_accelerator(spec.force_tcg)
    progress.say(f"accelerator: {accelerator.value} ({why})")
    partial = spec.output.with_name(spec.output.name + ".partial")
    work = Path(tempfile.mkdtemp(prefix=".hotadd-image-", dir=spec.output.parent))
    # others may search it (QEMU's user under qemu:///system opens files in it by name) but
    # not list it; the provisioning ISO in it is the caller's alone (libvirt hands it to QEMU)
    work.chmod(0o711)
    try:
        with progress.stage("read install.wim", str(spec.windows_iso)):
            image = spec.image.pick(windows_iso_images(spec.windows_iso),
                                    str(spec.windows_iso))
            version = check_edition(image)
            check_licence(image, spec.product_key)
            progress.say(f"image {image.describe()}: Windows Server {version.value}, "
                         f"edition {image.edition_id or '?'}"
                         + (", evaluation" if image.evaluation else ", product key given"))
        settings = UnattendSettings(version=version, firmware=spec.firmware, image=image,
                                    password=spec.password, product_key=spec.product_key)
        with progress.stage("provisioning ISO", "answer file, scripts, virtio drivers"):
            (work / "prov").mkdir(mode=0o700)  # the answer file in it holds the password
            tree = stage_provisioning(settings, spec.virtio_iso, work / "prov")
            prov_iso = work / "provision.iso"
            prov_iso.touch(mode=0o600)  # it holds the password: never readable by others
            build_iso(tree, prov_iso, PROVISION_LABEL)
            shutil.rmtree(tree)
        with progress.stage("disk", f"{spec.disk_gib} GiB qcow2"):
            partial.unlink(missing_ok=True)
            proc = run_tool(["qemu-img", "create", "-q", "-f", "qcow2", str(partial),
                          f"{spec.disk_gib}G"], "qemu-utils")
            if proc.returncode != 0:
                raise InfrastructureError(f"qemu-img create failed: {proc.stderr.strip()}",
                                          "check free disk space")
        nvram = None
        if spec.firmware is Firmware.UEFI:
            nvram = work / "OVMF_VARS.fd"
            shutil.copyfile(OVMF_VARS, nvram)
        spec.logs.mkdir(parents=True, exist_ok=True)
        installer = start(spec, accelerator, partial, prov_iso, nvram)
        shots = Screenshots(installer.screenshot, spec.logs / "screens", spec.screenshot_every)
        try:
            if spec.vnc:
                _announce_vnc(installer, progress)
            shots.start()
            watch = DiskWatch(installer.disk_allocated, spec.timeouts.stall)
            facts = _install_and_verify(spec, installer, progress, watch, shots)
        finally:
            shots.stop()
            installer.close()
        with progress.stage("finalize", str(spec.output)):
            return _finalize(spec, image, version, partial, nvram, facts)
    finally:
        partial.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)  # the provisioning ISO holds the password


def _announce_vnc(installer: Installer, progress: Progress) -> None:
    port = installer.vnc_port()
    if port is None or port < 0:
        raise DomainError("the installer VM has no VNC display although --vnc was given",
                          "report it with the run directory's domain.xml")
    progress.say(f"screen: VNC on 127.0.0.1:{port} (this host only, no password: any local "
                 f"user can watch); view it with 'vncviewer 127.0.0.1::{port}' or "
                 f"'remote-viewer vnc://127.0.0.1:{port}'; from another machine first "
                 f"'ssh -L {port}:127.0.0.1:{port} THIS-HOST'")


@contextlib.contextmanager
def _stage(progress: Progress, name: str, awaited: str, installer: Installer,
           shots: Screenshots, winrm: WinRMTransport | None = None) -> Iterator[None]:
    """A build stage whose failure names the stage, the last screenshot and the serial log;
    once WinRM is up (`winrm`), also the guest's provisioning log, copied beside them."""
    try:
        with progress.stage(name, awaited):
            yield
    except HotaddError as exc:
        cause = installer.machine.cause_of(exc)  # gone silent: crashed or switched off?
        shot = shots.final("failed")
        evidence = (f"last screenshot {shot}; " if shot else "no screenshot; ") + \
            f"serial log {installer.machine.spec.serial_log}"
        if winrm is not None:  # WinRM came up first, so a hung provisioning step shows here
            copy_to = installer.machine.spec.serial_log.with_name("provision.log")
            try:
                winrm.fetch(PROVISION_LOG, copy_to)
                evidence += f"; the guest's {PROVISION_LOG} copied to {copy_to}"
            except HotaddError:
                copy_to.unlink(missing_ok=True)
        cause.add_note(f"image build stopped at stage '{name}' ({evidence})")
        raise cause from cause.__cause__  # exc itself, or the crash that silenced it (exc)


def _install_and_verify(spec: ImageBuildSpec, installer: Installer,
                        progress: Progress, watch: DiskWatch,
                        shots: Screenshots) -> dict[str, Any]:
    t = spec.timeouts
    with _stage(progress, "boot installer", "Setup to write the disk (pressing keys for the "
                "ISO's boot prompt)", installer, shots):
        # Only until the disk is written: after Setup's first reboot the same prompt would
        # start Setup all over again.
        while not watch.written:
            installer.machine.check_alive()
            watch.check()
            installer.press_key()
            time.sleep(1.0)
            watch.sample()

    def still_installing() -> None:
        installer.machine.check_alive()
        watch.check()

    transport = WinRMTransport(WinRMEndpoint(
        port=installer.winrm_port(), username=ADMIN_USER, password=spec.password,
        read_timeout=t.winrm_read,
        operation_timeout=max(1, min(20, t.winrm_read - 5))))
    with transport:
        t0 = time.monotonic()
        with _stage(progress, "install", "Windows Setup, first logon, provisioning, WinRM",
                    installer, shots):
            transport.wait_ready(
                t.install, still_alive=still_installing,
                on_wait=throttled(lambda _e: progress.waiting(
                    "install", f"{transport.description} (disk {watch.size / 2**30:.2f} GiB)",
                    t0)),
                hint=f"read the serial log {installer.machine.spec.serial_log}")
        with _stage(progress, "provision", "provisioning and its reboot", installer, shots,
                    transport):
            state = wait_provisioned(transport, t.provision, installer.machine.check_alive)
        with _stage(progress, "verify", "test signing, hot-add support", installer, shots,
                    transport):
            pre = preflight(transport, t.verify)
            failed = {k: v for k, v in state.get("steps", {}).items() if v != "ok"}
            if fatal := {k: v for k, v in failed.items() if k in CRITICAL_STEPS}:
                raise InfrastructureError(f"provisioning steps failed: {fatal}",
                                          f"read {PROVISION_LOG} in the guest")
            for step, why in failed.items():
                progress.say(f"warning: provisioning step {step!r} {why}")
            if pre.test_signing is not True:
                raise InfrastructureError("test signing is not in effect after the reboot",
                                          "is Secure Boot on? the image needs OVMF without it")
            if pre.vbs is VbsStatus.RUNNING:
                progress.say("warning: virtualization-based security is running in the guest "
                             "(not supported with CPU hot-add); the manifest records it")
            if not pre.dyn_processor_enabled:
                progress.say(f"warning: {pre.product} ({pre.edition}) does not report dynamic "
                             "processor support (SharedUserData DbgDynProcessorEnabled): "
                             "hot-added CPUs may stay offline; the manifest records it")
        with _stage(progress, "shutdown", "the guest to power off", installer, shots):
            with contextlib.suppress(TransportError):
                transport.run("shutdown.exe /s /t 0 /d p:4:1")
            deadline = time.monotonic() + t.shutdown
            while installer.is_running():
                if time.monotonic() > deadline:
                    raise GuestNotReady(f"the guest did not power off in {t.shutdown:.0f}s",
                                        "look at the screenshot: an update may be installing")
                time.sleep(2.0)
    return {"preflight": asdict(pre), "provisioning": state}


def _finalize(spec: ImageBuildSpec, image: WimImage, version: WindowsVersion, partial: Path,
              nvram: Path | None, facts: dict[str, Any]) -> GoldenManifest:
    partial.rename(spec.output)
    spec.output.chmod(0o444)
    kept_nvram = None
    if nvram is not None:
        kept_nvram = nvram_path(spec.output)
        shutil.copyfile(nvram, kept_nvram)
        kept_nvram.chmod(0o444)
    pre = facts["preflight"]
    manifest = GoldenManifest(
        image=spec.output.name, windows_version=version.value, edition=image.name,
        image_index=image.index, build=pre.get("build") or image.build,
        firmware=spec.firmware.value, disk_bus="sata",
        nvram=kept_nvram.name if kept_nvram else None, user=ADMIN_USER,
        winrm_port=WINRM_GUEST_PORT,
        created_utc=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        hotadd={"dyn_processor_enabled": pre.get("dyn_processor_enabled"),
                "licence_dynamic_partitioning": pre.get("licence_dynamic_partitioning"),
                "test_signing": pre.get("test_signing"), "wdf_version": pre.get("wdf_version"),
                "vbs_status": pre.get("vbs_status"),
                "edition_id": pre.get("edition")},
        source_iso=spec.windows_iso.name, virtio_iso=spec.virtio_iso.name,
        provisioning={str(k): str(v) for k, v in facts["provisioning"].get("steps", {}).items()},
    )
    manifest.write(manifest_path(spec.output))
    return manifest


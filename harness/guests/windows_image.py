"""`hotadd image build`: Windows Server installed unattended into a read-only golden qcow2.

The flow, stage by stage: read install.wim and pick the image, build the provisioning ISO
(`windows_setup`), create the disk, boot the installer domain (Windows ISO, provisioning ISO,
SATA disk, WinRM forwarded to 127.0.0.1), press a key for the ISO's boot prompt, wait for
WinRM and the provisioning reboot, verify with the preflight (`windows_control`), power off,
and write the image read-only with its JSON manifest (no secrets) beside it. A failed stage
names itself and leaves a screenshot and the serial log.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import tempfile
import time
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
    check_readable_iso,
    run_tool,
    stage_provisioning,
    windows_iso_images,
)
from harness.host import accel, storage
from harness.host.connection import open_connection
from harness.host.domain import (
    OVMF_VARS,
    Accelerator,
    Cdrom,
    Disk,
    DiskBus,
    DomainSpec,
    Firmware,
    Forward,
    Profile,
    Topology,
    VcpuPlan,
    to_xml,
)
from harness.host.machine import Machine, free_port, run_name
from harness.host.sweep import sweep
from harness.progress import Progress, throttled
from harness.transport.winrm import WinRMEndpoint, WinRMTransport

ADMIN_USER = "Administrator"
#: hotadd-provision.ps1 steps without which the image is useless; others only warn.
CRITICAL_STEPS = frozenset({"test signing", "winrm", "local account token filter",
                            "server 2016 ACPI0010 workaround"})


@dataclass(frozen=True)
class StageTimeouts:
    """Seconds per image-build stage (KVM figures; TCG would need hours)."""

    boot_keys: float = 30.0  # pressing space for the ISO's "press any key" prompt
    install: float = 5400.0  # Setup, reboots, first logon, provisioning, WinRM up
    provision: float = 1200.0  # the reboot after provisioning, WinRM back
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
    firmware: Firmware = Firmware.UEFI
    disk_gib: int = 40
    memory_mib: int = 4096
    vcpus: int = 2
    force_tcg: bool = False
    libvirt_uri: str | None = None
    run_dir: Path | None = None  # logs, screenshot; default: <output>.build/
    timeouts: StageTimeouts = field(default_factory=StageTimeouts)

    def __post_init__(self) -> None:
        if self.disk_gib < 32:
            raise InputError(f"disk size {self.disk_gib} GiB is too small for Windows Server",
                             "give at least 32 GiB (--disk-gib)")
        if self.output.exists():
            raise InputError(f"{self.output} already exists (golden images are never "
                             "overwritten)", "choose another --output or remove the old image")
        if not self.output.parent.is_dir():
            raise InputError(f"the output directory {self.output.parent} does not exist",
                             "create it first")

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


class Installer:
    """The installer VM, seen by the build flow. Wraps harness.host.machine.Machine so the
    flow reads as stages and tests can see exactly what it asks of the host layer."""

    def __init__(self, machine: Machine, conn: libvirt.virConnect) -> None:
        self.machine = machine
        self.conn = conn

    def press_keys(self, seconds: float) -> None:
        """Press space now and then for `seconds`: the Windows ISO's UEFI loader waits for
        "any key" and otherwise falls through to the empty disk."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.machine.check_alive()
            try:
                self.machine.dom.sendKey(libvirt.VIR_KEYCODE_SET_LINUX, 50, [57], 1, 0)
            except libvirt.libvirtError as exc:
                raise DomainError(f"could not press a key in the installer VM: "
                                  f"{exc.get_error_message()}",
                                  "check the domain has a keyboard (hotadd doctor)") from exc
            time.sleep(1.0)

    def is_running(self) -> bool:
        try:
            return bool(self.machine.dom.isActive())
        except Exception:  # libvirt: the transient domain is gone once it powered off
            return False

    def artifacts(self, run_dir: Path) -> str:
        shot = None
        with contextlib.suppress(Exception):
            shot = self.machine.screenshot(run_dir / "screenshot.png")
        serial = self.machine.spec.serial_log
        return (f"screenshot {shot}; " if shot else "no screenshot; ") + f"serial log {serial}"

    def close(self) -> None:
        self.machine.close()
        self.conn.close()


def start_installer(spec: ImageBuildSpec, accelerator: Accelerator, disk: Path, prov_iso: Path,
                    nvram: Path | None, port: int) -> Installer:
    """Boot the installer domain: Windows ISO first, provisioning ISO, the new disk (SATA:
    Windows' inbox AHCI driver, so booting never depends on virtio drivers)."""
    conn = open_connection(spec.libvirt_uri)
    try:
        sweep(conn)
        name = run_name("winimage")
        scratch = storage.run_scratch(name)
        dom_spec = installer_spec(spec, name, accelerator, disk, prov_iso, nvram, port)
        return Installer(Machine.start(conn, dom_spec, scratch), conn)
    except BaseException:
        conn.close()
        raise


def installer_spec(spec: ImageBuildSpec, name: str, accelerator: Accelerator, disk: Path,
                   prov_iso: Path, nvram: Path | None, port: int,
                   planned: bool = False) -> DomainSpec:
    """The installer domain: Windows ISO first, provisioning ISO, the new disk on SATA."""
    return DomainSpec(
        name=name, profile=Profile.WINDOWS,
        vcpus=VcpuPlan(Topology(sockets=1, dies=1, cores=spec.vcpus), boot=spec.vcpus),
        serial_log=spec.logs / "serial.log", memory_mib=spec.memory_mib,
        firmware=spec.firmware, accelerator=accelerator, nvram=nvram,
        disks=(Disk(disk, bus=DiskBus.SATA),),
        cdroms=(Cdrom(spec.windows_iso.resolve()), Cdrom(prov_iso)),
        forwards=(Forward(guest_port=5985, host_port=port),),
        metadata={"purpose": "windows image build"}, planned=planned,
    )


def planned_installer_xml(spec: ImageBuildSpec) -> str:
    """The installer domain XML `build_image(spec)` would define (`--print-xml`): no ISO is
    read, nothing created or started; KVM unless the spec forces TCG."""
    accelerator = Accelerator.TCG if spec.force_tcg else Accelerator.KVM
    work = spec.output.parent / ".hotadd-image-PLANNED"
    nvram = work / "OVMF_VARS.fd" if spec.firmware is Firmware.UEFI else None
    return to_xml(installer_spec(spec, run_name("winimage"), accelerator,
                                 spec.output.with_name(spec.output.name + ".partial"),
                                 work / "provision.iso", nvram, free_port(), planned=True))


InstallerFactory = Callable[[ImageBuildSpec, Accelerator, Path, Path, "Path | None", int],
                            Installer]


def build_image(spec: ImageBuildSpec, progress: Progress,
                start: InstallerFactory = start_installer) -> GoldenManifest:
    """Install Windows unattended into a new read-only golden qcow2 with a JSON manifest."""
    check_readable_iso(spec.windows_iso, "Windows ISO")
    check_readable_iso(spec.virtio_iso, "virtio-win ISO")
    accelerator, why = check_accelerator(spec.force_tcg)
    progress.say(f"accelerator: {accelerator.value} ({why})")
    partial = spec.output.with_name(spec.output.name + ".partial")
    work = Path(tempfile.mkdtemp(prefix=".hotadd-image-", dir=spec.output.parent))
    try:
        with progress.stage("read install.wim", str(spec.windows_iso)):
            image = spec.image.pick(windows_iso_images(spec.windows_iso, work, progress),
                                    str(spec.windows_iso))
            version = check_edition(image)
            progress.say(f"image {image.describe()}: Windows Server {version.value}, "
                         f"edition {image.edition_id or '?'}")
        settings = UnattendSettings(version=version, firmware=spec.firmware,
                                    image=spec.image, password=spec.password)
        with progress.stage("provisioning ISO", "answer file, scripts, virtio drivers"):
            tree = stage_provisioning(settings, spec.virtio_iso, work / "prov")
            prov_iso = build_iso(tree, work / "provision.iso", PROVISION_LABEL)
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
        port = free_port()
        spec.logs.mkdir(parents=True, exist_ok=True)
        installer = start(spec, accelerator, partial, prov_iso, nvram, port)
        try:
            facts = _install_and_verify(spec, installer, port, progress)
        finally:
            installer.close()
        with progress.stage("finalize", str(spec.output)):
            return _finalize(spec, image, version, partial, nvram, port, facts)
    finally:
        partial.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)  # the provisioning ISO holds the password


def restated(exc: HotaddError, problem: str, fix: str) -> HotaddError:
    """The same error (class, bugcheck and all) with a new message."""
    new = copy.copy(exc)
    new.problem, new.fix = problem, fix
    new.args = (f"{problem}\n  fix: {fix}",)
    return new


@contextlib.contextmanager
def _stage(progress: Progress, name: str, awaited: str, installer: Installer,
           run_dir: Path) -> Iterator[None]:
    """A build stage whose failure names the stage and leaves screenshot + serial log."""
    try:
        with progress.stage(name, awaited):
            yield
    except HotaddError as exc:
        cause: HotaddError = exc
        if isinstance(exc, TransportError):  # the guest went silent: crashed or switched off?
            try:
                installer.machine.check_alive()
            except HotaddError as dead:
                cause = dead
        raise restated(cause, f"image build stopped at stage '{name}': {cause.problem}",
                       f"{cause.fix or 'see the logs'} ({installer.artifacts(run_dir)})") from None


def _install_and_verify(spec: ImageBuildSpec, installer: Installer, port: int,
                        progress: Progress) -> dict[str, Any]:
    t = spec.timeouts
    with _stage(progress, "boot installer", "pressing a key for the ISO's boot prompt",
                installer, spec.logs):
        installer.press_keys(t.boot_keys)
    transport = WinRMTransport(WinRMEndpoint(
        port=port, username=ADMIN_USER, password=spec.password, read_timeout=t.winrm_read,
        operation_timeout=max(1, min(20, t.winrm_read - 5))))
    with transport:
        t0 = time.monotonic()
        with _stage(progress, "install", "Windows Setup, first logon, provisioning, WinRM",
                    installer, spec.logs):
            transport.wait_ready(
                t.install, still_alive=installer.machine.check_alive,
                on_wait=throttled(lambda _e: progress.waiting("install", transport.description,
                                                              t0)),
                hint=f"read the serial log {installer.machine.spec.serial_log}")
        with _stage(progress, "provision", "the reboot after provisioning", installer,
                    spec.logs):
            state = wait_provisioned(transport, t.provision, installer.machine.check_alive)
        with _stage(progress, "verify", "test signing, hot-add support", installer, spec.logs):
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
        with _stage(progress, "shutdown", "the guest to power off", installer, spec.logs):
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
              nvram: Path | None, port: int, facts: dict[str, Any]) -> GoldenManifest:
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
        nvram=kept_nvram.name if kept_nvram else None, user=ADMIN_USER, winrm_port=5985,
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


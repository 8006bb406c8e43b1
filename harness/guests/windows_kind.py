"""The Windows guest as a `GuestKind`: golden image + driver ISO in, WinRM session out.

Each run boots a qcow2 overlay of the read-only golden image (`hotadd image build`) with the
hardware the image was installed on (firmware and disk bus from its manifest), attaches a
small ISO carrying the probe driver and the probe-control script, waits for WinRM on a
127.0.0.1 forward, and drives the probe through `harness.guests.windows_control`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from harness.clock import ClockSample
from harness.errors import InfrastructureError, InputError
from harness.guests import windows_control, windows_image, windows_setup
from harness.guests.base import (
    DriverOption,
    DriverPackage,
    GuestFacts,
    GuestKind,
    GuestSettings,
    HardwareRequest,
    ProbeSettings,
    Session,
    blaming_the_guest,
)
from harness.host import staging, storage
from harness.host.domain import (
    Accelerator,
    Cdrom,
    Disk,
    DiskBus,
    DomainSpec,
    Firmware,
    Forward,
    GuestOS,
)
from harness.host.machine import Machine
from harness.oracle import Profile as OracleProfile
from harness.paths import REPO_ROOT
from harness.progress import Progress, throttled
from harness.transport.base import Transport
from harness.transport.winrm import WinRMEndpoint, WinRMTransport

DRIVER_FILE = "hotaddprobe.sys"  # its name on the driver ISO
VBS_WORDS = {windows_control.VbsStatus.OFF: "off",
             windows_control.VbsStatus.ENABLED_NOT_RUNNING: "enabled, not running",
             windows_control.VbsStatus.RUNNING: "running"}
WINRM_PORT = 5985
#: Windows Server takes 30-90 s to boot to WinRM on KVM; shorter waits only fail spuriously.
MIN_READY_TIMEOUT = 300.0
#: Where driver/build.cmd leaves the driver, tried when --driver is not given.
DEFAULT_DRIVERS = tuple(REPO_ROOT / "driver" / "build" / c / "HotAddProbe.sys"
                        for c in ("Release", "Debug"))


def probe_parameters(settings: ProbeSettings,
                     active: int | None) -> windows_control.ProbeParameters:
    """The service Parameters for `settings`; `active` = processors online at load, which
    decides whether the veto index names a replayed processor or a hot-added one."""
    if settings.veto_index is None:
        return windows_control.ProbeParameters(flags=1 if settings.add_existing else 0)
    replay = settings.add_existing and active is not None and settings.veto_index < active
    return windows_control.ProbeParameters(
        flags=1 if settings.add_existing else 0, veto_index=settings.veto_index,
        veto_status=settings.veto_status, veto_during_replay=replay)


class WindowsSession(Session):
    """The probe driver in a running Windows guest, over any cmd.exe transport.

    `still_alive` (the machine's check) is consulted whenever the guest stops answering, so a
    bugcheck surfaces as GuestCrashed with its code, not as a transport timeout.
    """

    def __init__(self, transport: Transport, driver_source: str = DRIVER_FILE,
                 still_alive: Callable[[], None] | None = None) -> None:
        self.transport = transport
        self.driver_source = driver_source
        self.still_alive = still_alive
        self.installed: windows_control.DriverInstall | None = None
        self.last_start: windows_control.ServiceStart | None = None

    def _guest(self) -> contextlib.AbstractContextManager[None]:
        return blaming_the_guest(self.still_alive)

    def load_probe(self, settings: ProbeSettings) -> None:
        """Install (first time), set Parameters, start. A refused start is not an error here:
        with a replay veto DriverEntry fails on purpose; the records tell the story."""
        with self._guest():
            if self.installed is None:
                self.installed = windows_control.install_driver(self.transport, self.driver_source)
            active = None
            if settings.veto_index is not None:
                active = windows_control.processor_count(self.transport).active_all_groups
            windows_control.set_parameters(self.transport, probe_parameters(settings, active))
            self.last_start = windows_control.start_service(self.transport)

    def unload_probe(self) -> None:
        with self._guest():
            windows_control.stop_service(self.transport)

    def live_records(self) -> str:
        """Complete lines only: the driver's writer may be half-way through the last one."""
        with self._guest():
            text = windows_control.read_records(self.transport)
        return text[: text.rfind("\n") + 1]

    def final_records(self) -> str:
        with self._guest():
            return windows_control.read_records(self.transport)

    def processor_count(self) -> int:
        with self._guest():
            return windows_control.processor_count(self.transport).logical

    def clock_samples(self, count: int) -> list[ClockSample]:
        """One handshake whatever `count`: each PowerShell command costs seconds, so one
        timed command inside one probe call is the round trip the mapping gets."""
        with self._guest():
            sample = windows_control.clock_sample(self.transport)
        return [] if sample is None else [sample]

    def install_driver(self, driver: DriverPackage) -> None:
        with self._guest():
            windows_control.install_own_driver(self.transport, driver.path, driver.name,
                                               driver.params)

    def start_driver(self, driver: DriverPackage) -> None:
        with self._guest():
            windows_control.start_own_driver(self.transport, driver.name)

    def stop_driver(self, driver: DriverPackage) -> None:
        with self._guest():
            windows_control.stop_own_driver(self.transport, driver.name)

    def driver_running(self, driver: DriverPackage) -> bool:
        with self._guest():
            return windows_control.own_driver_running(self.transport, driver.name)

    def driver_records(self, driver: DriverPackage) -> str:
        """Its recorder's file, named after the service (driver/recorder/README.md: start the
        recorder with the service name)."""
        with self._guest():
            return windows_control.read_writer_records(self.transport, driver.name)

    def facts(self) -> GuestFacts:
        """From the preflight, which also refuses builds the probe cannot load on."""
        with self._guest():
            pre = windows_control.preflight(self.transport)
        vbs = None if pre.vbs is None else VBS_WORDS[pre.vbs]
        return GuestFacts(os=f"{pre.product} ({pre.edition})", build=pre.build, vbs=vbs,
                          dynamic_processors=pre.dyn_processor_enabled)


#: A service (and recorder writer) name: what driver/recorder/recorder_name.c accepts.
_SERVICE_NAME = re.compile(r"[A-Za-z0-9_-]{1,48}")
_IMAGE_SUBSYSTEM_NATIVE = 1
_IMAGE_FILE_MACHINE_AMD64 = 0x8664


def check_sys(path: Path, params: tuple[tuple[str, str], ...]) -> str:
    """The service name for a developer's .sys (its file name without .sys), after checking
    it is an x64 native PE image ("PE Format", https://learn.microsoft.com/en-us/windows/
    win32/debug/pe-format: MZ, e_lfanew at 0x3C, "PE\\0\\0", Machine, the optional
    header's Subsystem) and its parameters can be passed to reg.exe intact."""
    fix = "give a 64-bit kernel driver (.sys) built with the WDK"
    try:
        data = path.read_bytes()[:4096]
    except OSError as exc:
        raise InputError(f"--with-driver {path}: {exc.strerror or exc}", fix) from None
    pe = int.from_bytes(data[0x3C:0x40], "little") if len(data) >= 0x40 else 0
    if data[:2] != b"MZ" or data[pe:pe + 4] != b"PE\0\0":
        raise InputError(f"--with-driver {path} is not a Windows PE image", fix)
    machine = int.from_bytes(data[pe + 4:pe + 6], "little")
    subsystem = int.from_bytes(data[pe + 24 + 68:pe + 24 + 70], "little")
    if machine != _IMAGE_FILE_MACHINE_AMD64 or subsystem != _IMAGE_SUBSYSTEM_NATIVE:
        raise InputError(f"--with-driver {path} is a PE image but not an x64 kernel driver "
                         f"(machine 0x{machine:04X}, subsystem {subsystem})", fix)
    name = path.name[: -len(".sys")]
    if not _SERVICE_NAME.fullmatch(name) or name.lower() == windows_control.SERVICE_NAME.lower():
        raise InputError(f"--with-driver {path}: {name!r} cannot be its service and records "
                         "name", "name the file NAME.sys with NAME 1-48 of A-Z a-z 0-9 _ - "
                         f"(not {windows_control.SERVICE_NAME})")
    bad = [f"{k}={v}" for k, v in params if any(c in v for c in '"%\r\n')]
    if bad:
        raise InputError(f"--with-driver-param {bad[0]!r}: cmd.exe would alter a value holding "
                         "a quote, % or a line end", "pass a value without them")
    return name


def _firmware(hw: HardwareRequest, installed: Firmware | None) -> Firmware:
    """The image's firmware (a different --firmware is an error), else --firmware or UEFI."""
    if installed is None:
        return hw.firmware or Firmware.UEFI
    if hw.firmware is not None and hw.firmware is not installed:
        raise InputError(f"the image was installed with {installed.value} firmware, not "
                         f"{hw.firmware.value}", f"use --firmware {installed.value}")
    return installed


def _spec(hw: HardwareRequest, firmware: Firmware, disk: Disk, nvram: Path | None,
          driver_iso: Path, planned: bool = False, remote: bool = False) -> DomainSpec:
    return DomainSpec(
        name=hw.name, vcpus=hw.vcpus, guest_os=GuestOS.WINDOWS,
        serial_log=hw.run_dir / "serial.log",
        memory_mib=hw.memory_mib or WindowsKind.default_memory_mib,
        firmware=firmware, accelerator=hw.accelerator, nvram=nvram, disks=(disk,),
        cdroms=(Cdrom(driver_iso),),
        forwards=(Forward(guest_port=WINRM_PORT),), planned=planned,
        remote=remote,
    )


@dataclasses.dataclass(frozen=True)
class WindowsSettings(GuestSettings):
    """What a Windows run boots: checked when the guest is prepared (`--print-xml` needs
    neither to exist)."""

    image: Path | None = None  # --image: the golden image (hotadd image build)
    driver: Path | None = None  # --driver: the probe driver .sys (else DEFAULT_DRIVERS)


class WindowsKind(GuestKind):
    name = "windows"
    os = GuestOS.WINDOWS
    oracle_profile = OracleProfile.WINDOWS
    settings_type = WindowsSettings
    origin = "boots a golden image (--image)"
    own_driver = DriverOption("driver", ".sys")
    transport = WinRMTransport
    default_memory_mib = 2048

    @classmethod
    def from_settings(cls, settings: GuestSettings) -> WindowsKind:
        assert isinstance(settings, WindowsSettings), settings
        return cls(image=settings.image, driver=settings.driver)

    @classmethod
    def check_driver_file(cls, driver: DriverPackage) -> None:
        check_sys(driver.path, driver.params)  # an x64 native PE image, a usable name

    def __init__(self, image: Path | None, driver: Path | None, *,
                 allow_tcg: bool = False) -> None:
        self.image = image
        self.driver = driver
        self.allow_tcg = allow_tcg  # tests only: Windows itself needs hours to boot under TCG
        self._manifest: windows_image.GoldenManifest | None = None
        self._password: str | None = None

    @property
    def manifest(self) -> windows_image.GoldenManifest:
        if self._manifest is None:
            raise InputError("the Windows guest was not prepared", "call prepare() first")
        return self._manifest

    def prepare(self, progress: Progress) -> None:
        if self.image is None:
            raise InputError("--guest windows needs a golden image",
                             "build one with 'hotadd image build' and pass --image PATH")
        if not self.image.is_file():
            raise InputError(f"golden image {self.image} does not exist",
                             "build it with 'hotadd image build' or fix --image")
        manifest_file = windows_image.manifest_path(self.image)
        if not manifest_file.is_file():
            raise InputError(f"{self.image} has no manifest {manifest_file.name} beside it",
                             "use an image made by 'hotadd image build'")
        if self.driver is None:
            self.driver = next((p for p in DEFAULT_DRIVERS if p.is_file()), None)
        if self.driver is None or not self.driver.is_file():
            raise InputError(f"the probe driver {self.driver or '(not given, not built)'} is "
                             "missing", "pass --driver PATH.sys (build it from driver/, see "
                             "driver/README.md)")
        self._manifest = windows_image.GoldenManifest.read(manifest_file)
        self._password = windows_setup.password_from_env()
        progress.say(f"windows image: Server {self.manifest.windows_version}, "
                     f"{self.manifest.edition}, {self.manifest.firmware}")

    def warm_inputs(self) -> tuple[Path, ...]:
        """The golden image (the run's disk is an overlay on it) and what the driver CD holds."""
        assert self.image is not None and self.driver is not None
        return (self.image, self.driver, windows_control.PROBE_SCRIPT)

    def domain_spec(self, hw: HardwareRequest) -> DomainSpec:
        assert self.image is not None and self.driver is not None
        if hw.accelerator is not Accelerator.KVM and not self.allow_tcg:
            raise InputError("Windows under TCG emulation takes far too long to boot for a run",
                             "run the Windows scenario on a KVM host (--accel kvm)")
        m = self.manifest
        firmware = _firmware(hw, Firmware(m.firmware))
        if hw.host.remote:
            return self._remote_spec(hw, firmware)
        nvram = None
        if firmware is Firmware.UEFI:
            nvram = hw.scratch / "OVMF_VARS.fd"
            kept = self.image.with_name(m.nvram) if m.nvram else None
            if kept is not None and kept.is_file():
                shutil.copyfile(kept, nvram)
                nvram.chmod(0o644)
            else:
                nvram = storage.nvram_copy(hw.scratch)
        iso = self._driver_iso(hw.scratch)
        disk = Disk(storage.overlay(self.image, hw.scratch), bus=DiskBus(m.disk_bus))
        return _spec(hw, firmware, disk, nvram, iso)

    def _driver_iso(self, work: Path) -> Path:
        """The driver CD (the probe driver and its control script) as work/driver.iso."""
        assert self.driver is not None
        tree = work / "driver-iso"
        tree.mkdir()
        shutil.copyfile(self.driver, tree / DRIVER_FILE)
        shutil.copyfile(windows_control.PROBE_SCRIPT, tree / windows_control.PROBE_SCRIPT.name)
        iso = windows_setup.build_iso(tree, work / "driver.iso", windows_setup.DRIVER_LABEL)
        shutil.rmtree(tree)
        return iso

    def _remote_spec(self, hw: HardwareRequest, firmware: Firmware) -> DomainSpec:
        """On a remote host: the golden image and its NVRAM staged there by content (sent once
        per host, `harness.host.staging`), the overlay and the run's NVRAM copy made there,
        the driver CD built here and sent into the run's scratch dir. The password is none of
        these: it stays in this process (WinRM's Basic auth over the tunnel)."""
        assert self.image is not None
        host, m = hw.host, self.manifest
        nvram = None
        if firmware is Firmware.UEFI:
            kept = self.image.with_name(m.nvram) if m.nvram else None
            if kept is None or not kept.is_file():
                raise InputError(f"{self.image} has no NVRAM file beside it: a run on a remote "
                                 "host starts from the image's own", "use an image made by "
                                 "'hotadd image build' (it keeps the NVRAM beside the image)")
            nvram = hw.scratch / "OVMF_VARS.fd"
            copied = host.run(["cp", "--", str(staging.stage(host, kept).remote), str(nvram)])
            if copied.rc != 0:
                raise InfrastructureError(f"{host.description}: cannot copy the NVRAM: "
                                          f"{copied.stderr.strip()}", "check its disk space")
        with tempfile.TemporaryDirectory(prefix="hotadd-driver-") as work:
            host.put(self._driver_iso(Path(work)), hw.scratch / "driver.iso")
        golden = staging.stage(host, self.image).remote
        disk = Disk(storage.overlay(golden, hw.scratch, host=host), bus=DiskBus(m.disk_bus))
        return _spec(hw, firmware, disk, nvram, hw.scratch / "driver.iso", remote=True)

    def planned_spec(self, hw: HardwareRequest) -> DomainSpec:
        """From the image's manifest if there is one, else the image build's defaults (UEFI,
        SATA); the image, driver and manifest need not exist."""
        manifest_file = windows_image.manifest_path(self.image) if self.image else None
        m = (windows_image.GoldenManifest.read(manifest_file)
             if manifest_file is not None and manifest_file.is_file() else None)
        firmware = _firmware(hw, Firmware(m.firmware) if m else None)
        disk = Disk(hw.scratch / "disk0.qcow2", bus=DiskBus(m.disk_bus) if m else DiskBus.SATA)
        nvram = hw.scratch / "OVMF_VARS.fd" if firmware is Firmware.UEFI else None
        return _spec(hw, firmware, disk, nvram, hw.scratch / "driver.iso", planned=True)

    def check_driver(self, driver: DriverPackage) -> DriverPackage:
        return dataclasses.replace(driver, name=check_sys(driver.path, driver.params))

    def open_session(self, machine: Machine, progress: Progress,
                     timeout: float) -> Session:
        assert self._password is not None
        transport = WinRMTransport(WinRMEndpoint(  # on a remote host, through its SSH
            port=machine.host.local_port(machine.forwarded_port(WINRM_PORT)),
            username=self.manifest.user,
            password=self._password))
        t0 = time.monotonic()
        transport.wait_ready(
            max(timeout, MIN_READY_TIMEOUT), still_alive=machine.check_alive,
            on_wait=throttled(
                lambda _err: progress.waiting("winrm", transport.description, t0), 10.0),
            hint=f"look at the screenshot; read the serial log {machine.spec.serial_log}")
        transport.liveness = machine.check_alive
        return WindowsSession(transport, still_alive=machine.check_alive)

"""The Windows guest: answer file, provisioning ISO, install.wim, the golden image, probe control.

Everything Windows-specific that can be done from Linux lives here: rendering
`vm/windows/Autounattend.xml.in`, building the provisioning ISO with xorriso (answer file,
the version's virtio-win driver folders, the provisioning and probe-control PowerShell),
reading the images inside install.wim with wimtools' `wiminfo`, the unattended image build
(`hotadd image build`), and the guest-side probe operations, which only use the `Transport`
interface (cmd.exe command lines carrying PowerShell), so WinRM and Windows OpenSSH both work.

Secrets: the Administrator password comes from the caller (environment variable
HOTADD_WINDOWS_PASSWORD by default), lands only in the answer file on the provisioning ISO
(Windows' reversible encoding, not plain text) and in the transport's memory; the ISO is deleted
when the build ends. It is never written to the manifest, logs or command lines.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import enum
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, get_args, get_type_hints
from xml.sax.saxutils import escape

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
)
from harness.host.machine import Machine, free_port, run_name
from harness.host.sweep import sweep
from harness.paths import REPO_ROOT
from harness.progress import Progress
from harness.transport.base import CommandResult, Transport
from harness.transport.winrm import (
    RemoteFileMissing,
    WinRMEndpoint,
    WinRMTransport,
    fetch_by_chunks,
    run_powershell,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

VM_DIR = REPO_ROOT / "vm" / "windows"
TEMPLATE = VM_DIR / "Autounattend.xml.in"
PROVISION_SCRIPT = VM_DIR / "hotadd-provision.ps1"
PROBE_SCRIPT = VM_DIR / "hotadd-probe.ps1"
PASSWORD_ENV = "HOTADD_WINDOWS_PASSWORD"
ADMIN_USER = "Administrator"
PROVISION_LABEL = "HOTADD_PROV"
DRIVER_LABEL = "HOTADD_DRV"
WINPE_DRIVERS = "$WinPEDriver$"
RECORDS_PATH = r"C:\ProgramData\HotAddProbe\records.jsonl"
SERVICE_NAME = "HotAddProbe"
PROVISION_LOG = r"C:\ProgramData\HotAdd\provision.log"
#: hotadd-provision.ps1 steps without which the image is useless; others only warn.
CRITICAL_STEPS = frozenset({"test signing", "winrm", "local account token filter",
                            "server 2016 ACPI0010 workaround"})
UNATTEND_NS = "urn:schemas-microsoft-com:unattend"
#: virtio-win folders the provisioning ISO carries: disk (blk and scsi), network, serial.
VIRTIO_DRIVERS = ("viostor", "vioscsi", "NetKVM", "vioserial")


class WindowsVersion(enum.Enum):
    """Windows Server releases the harness knows, by marketing year."""

    WS2016 = "2016"  # needs the ACPI0010 workaround (provisioning applies it)
    WS2019 = "2019"
    WS2022 = "2022"
    WS2025 = "2025"

    @property
    def virtio_dir(self) -> str:
        """virtio-win's per-release folder name (viostor/2k22/amd64, ...)."""
        return "2k" + self.value[2:]

    @property
    def build(self) -> int:
        return {"2016": 14393, "2019": 17763, "2022": 20348, "2025": 26100}[self.value]

    @classmethod
    def from_build(cls, build: int) -> WindowsVersion | None:
        return next((v for v in cls if v.build == build), None)


# ---- install.wim ------------------------------------------------------------------------------


@dataclass(frozen=True)
class WimImage:
    """One image inside install.wim, as wiminfo reports it."""

    index: int
    name: str
    display_name: str = ""
    edition_id: str = ""
    installation_type: str = ""
    build: int | None = None

    @property
    def version(self) -> WindowsVersion | None:
        """From the build number, else from a year in the name."""
        if self.build is not None and (v := WindowsVersion.from_build(self.build)):
            return v
        m = re.search(r"\b(2016|2019|2022|2025)\b", f"{self.name} {self.display_name}")
        return WindowsVersion(m[1]) if m else None

    def describe(self) -> str:
        extra = f" ({self.display_name})" if self.display_name else ""
        return f"{self.index}: {self.name}{extra}"


def parse_wiminfo(text: str) -> tuple[WimImage, ...]:
    """The images in `wiminfo WIM` output (blocks of "Key: value" lines starting at Index)."""
    images: list[WimImage] = []
    block: dict[str, str] = {}

    def flush() -> None:
        if "Index" in block:
            build = block.get("Build", "")
            images.append(WimImage(
                index=int(block["Index"]), name=block.get("Name", ""),
                display_name=block.get("Display Name", ""),
                edition_id=block.get("Edition ID", ""),
                installation_type=block.get("Installation Type", ""),
                build=int(build) if build.isdigit() else None))
        block.clear()

    for line in text.splitlines():
        m = re.match(r"^([A-Za-z][A-Za-z ]*?):\s*(.*?)\s*$", line)
        if not m:
            continue
        if m[1] == "Index":
            flush()
        block[m[1]] = m[2]
    flush()
    return tuple(images)


def read_wim_images(wim: Path) -> tuple[WimImage, ...]:
    """The images in a WIM/ESD file (wimtools' wiminfo)."""
    proc = _tool(["wiminfo", str(wim)], "wimtools")
    if proc.returncode != 0:
        raise InputError(f"{wim} is not a readable WIM: {proc.stderr.strip()}",
                         "give a Windows Server ISO whose sources/install.wim is intact")
    images = parse_wiminfo(proc.stdout)
    if not images:
        raise InputError(f"{wim} holds no images", "give a Windows Server installation ISO")
    return images


@dataclass(frozen=True)
class ImageSelector:
    """Which install.wim image to install: by name (/IMAGE/NAME) or by index (/IMAGE/INDEX)."""

    name: str | None = None
    index: int | None = None

    def __post_init__(self) -> None:
        if (self.name is None) == (self.index is None):
            raise InputError("choose the Windows image by name or by index (exactly one)",
                             'e.g. --edition "Windows Server 2022 SERVERDATACENTER" or --index 4')
        if self.index is not None and self.index < 1:
            raise InputError(f"image index {self.index} must be >= 1", "indexes start at 1")

    @classmethod
    def parse(cls, text: str) -> ImageSelector:
        """A number is an index, anything else a name."""
        return cls(index=int(text)) if text.strip().isdigit() else cls(name=text.strip())

    @property
    def key(self) -> str:
        return "/IMAGE/INDEX" if self.index is not None else "/IMAGE/NAME"

    @property
    def value(self) -> str:
        return str(self.index) if self.index is not None else str(self.name)

    def pick(self, images: Sequence[WimImage], source: str) -> WimImage:
        """The matching image, or an InputError listing the ones that are there."""
        for img in images:
            if (self.index is not None and img.index == self.index) or (
                    self.name is not None and img.name.casefold() == self.name.casefold()):
                return img
        present = "\n".join(f"    {img.describe()}" for img in images)
        raise InputError(f"image {self.value!r} is not in {source}; it holds:\n{present}",
                         "pass one of these names (or its index) with --edition")


def check_edition(image: WimImage) -> WindowsVersion:
    """Refuse editions known not to take CPU hot-add; return the Windows version."""
    client = image.installation_type.casefold() == "client" or (
        image.edition_id and not image.edition_id.casefold().startswith("server"))
    if client or image.edition_id.casefold() == "serverrdsh":
        raise InputError(
            f"image {image.describe()} is a client edition (Edition ID "
            f"{image.edition_id or '?'}, {image.installation_type or '?'}): only Windows Server "
            "editions start hot-added processors without a restart",
            "choose a Windows Server Standard or Datacenter image from the ISO")
    version = image.version
    if version is None:
        raise InputError(f"cannot tell which Windows Server release {image.describe()} is "
                         f"(build {image.build})",
                         "use Windows Server 2019, 2022 or 2025 media (2016 needs a workaround)")
    return version


# ---- the answer file --------------------------------------------------------------------------


@dataclass(frozen=True)
class UnattendSettings:
    """What varies between rendered answer files."""

    version: WindowsVersion
    firmware: Firmware
    image: ImageSelector
    password: str = field(repr=False)
    computer_name: str = "HOTADD-WIN"
    locale: str = "en-US"
    drive_letters: tuple[str, ...] = ("D", "E", "F", "G")

    def __post_init__(self) -> None:
        if not self.password:
            raise InputError("the Windows Administrator password is empty",
                             f"set {PASSWORD_ENV} to a password meeting Windows' complexity rules")
        if not re.fullmatch(r"[A-Za-z0-9-]{1,15}", self.computer_name):
            raise InputError(f"computer name {self.computer_name!r} is not a NetBIOS name",
                             "use up to 15 letters, digits and hyphens")


def unattend_secret(password: str, suffix: str) -> str:
    """Windows Setup's reversible password encoding (PlainText=false): base64 of the UTF-16LE
    text password+suffix, suffix "AdministratorPassword" or "Password" by element."""
    return base64.b64encode((password + suffix).encode("utf-16-le")).decode("ascii")


def driver_paths(settings: UnattendSettings) -> list[str]:
    """`<L>:\\$WinPEDriver$\\<driver>\\<2kNN>\\amd64` for every likely drive letter."""
    return [f"{letter}:\\{WINPE_DRIVERS}\\{drv}\\{settings.version.virtio_dir}\\amd64"
            for letter in settings.drive_letters for drv in VIRTIO_DRIVERS]


def render_autounattend(settings: UnattendSettings, template: Path = TEMPLATE) -> str:
    """The answer file for `settings`; raises InfrastructureError if the result is not XML."""
    text = template.read_text(encoding="utf-8")
    for fw in Firmware:
        block = re.compile(rf"[ \t]*<!-- FIRMWARE:{fw.value} -->\n(.*?)"
                           rf"[ \t]*<!-- /FIRMWARE:{fw.value} -->\n", re.S)
        if not block.search(text):
            raise InfrastructureError(f"{template} lacks the {fw.value} firmware block",
                                      "restore the template from git")
        text = block.sub(r"\1" if fw is settings.firmware else "", text)
    paths = "\n".join(
        f'        <PathAndCredentials wcm:action="add" wcm:keyValue="{i}">'
        f"<Path>{escape(p)}</Path></PathAndCredentials>"
        for i, p in enumerate(driver_paths(settings), start=1))
    values = {
        "LOCALE": settings.locale,
        "IMAGE_KEY": settings.image.key,
        "IMAGE_VALUE": settings.image.value,
        "OS_PARTITION": "3" if settings.firmware is Firmware.UEFI else "1",
        "COMPUTER_NAME": settings.computer_name,
        "ADMIN_PASSWORD": unattend_secret(settings.password, "AdministratorPassword"),
        "AUTOLOGON_PASSWORD": unattend_secret(settings.password, "Password"),
        "PROVISION_SCRIPT": PROVISION_SCRIPT.name,
    }
    text = text.replace("@DRIVER_PATHS@", paths)
    for key, value in values.items():
        text = text.replace(f"@{key}@", escape(value))
    if left := re.findall(r"@[A-Z_]+@", text):
        raise InfrastructureError(f"{template} has unknown placeholders {sorted(set(left))}",
                                  "add them to render_autounattend or remove them")
    try:
        ET.fromstring(text.encode("utf-8"))
    except ET.ParseError as exc:
        raise InfrastructureError(f"rendered answer file is not well-formed XML: {exc}",
                                  f"fix {template}") from None
    return text


# ---- ISOs -------------------------------------------------------------------------------------


def _tool(argv: list[str], package: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False,
                              timeout=timeout)
    except FileNotFoundError:
        raise InputError(f"{argv[0]} is not installed", f"apt-get install {package}") from None
    except subprocess.TimeoutExpired:
        raise InfrastructureError(f"{argv[0]} did not finish in {timeout:.0f}s",
                                  "check the disk and the input files") from None


def check_readable_iso(iso: Path, what: str) -> None:
    """InputError unless `iso` exists, is a readable file and starts like an optical image
    (ISO 9660, or the UDF bridge Windows media use)."""
    if not iso.exists():
        raise InputError(f"{what} {iso} does not exist", f"give the path of the {what}")
    if not iso.is_file():
        raise InputError(f"{what} {iso} is not a file", f"give the path of the {what} file")
    try:
        with iso.open("rb") as f:
            f.seek(32769)  # the first volume descriptor's identifier
            magic = f.read(5)
    except OSError as exc:
        raise InputError(f"{what} {iso} cannot be read: {exc.strerror}",
                         "check its permissions (the harness runs as you)") from None
    if magic not in (b"CD001", b"BEA01"):
        raise InputError(f"{what} {iso} is not an ISO 9660 / UDF image",
                         f"give the {what} itself (.iso), not an archive or disk image")


def list_iso(iso: Path) -> list[str]:
    """Every file in the ISO 9660/Joliet/Rock Ridge tree of an ISO we built ("/a/b")."""
    proc = _tool(["xorriso", "-indev", str(iso), "-find", "/", "-type", "f"], "xorriso")
    if proc.returncode != 0:
        raise InputError(f"xorriso cannot read {iso}: {proc.stderr.strip()[-500:]}",
                         "give a readable ISO image")
    out = []
    for line in proc.stdout.splitlines():
        if line.startswith("'") and line.endswith("'"):
            out.append(line[1:-1].replace("'\"'\"'", "'"))
    return out


# Input media are read with 7-Zip, not xorriso: Windows ISOs are UDF with an ISO 9660 "bridge"
# that holds only a README.TXT, and xorriso reads ISO 9660 alone.

def seven_zip() -> str:
    for name in ("7zz", "7z"):
        if path := shutil.which(name):
            return path
    raise InputError("7-Zip is not installed (needed to read the UDF file system of Windows "
                     "ISOs)", "apt-get install 7zip")


def iso_members(iso: Path) -> list[str]:
    """Every file in an input ISO (UDF or ISO 9660, as 7-Zip picks), as "/a/b" paths."""
    proc = _tool([seven_zip(), "l", "-slt", "-ba", str(iso)], "7zip")
    if proc.returncode != 0:
        raise InputError(f"7-Zip cannot read {iso}: {proc.stderr.strip()[-500:]}",
                         "give a readable ISO image")
    out: list[str] = []
    for block in proc.stdout.split("\n\n"):
        fields = dict(line.split(" = ", 1) for line in block.splitlines() if " = " in line)
        if "Path" in fields and fields.get("Folder", "-") != "+":
            out.append("/" + fields["Path"].replace("\\", "/"))
    return out


def extract_members(iso: Path, members: Sequence[str], dest: Path, *, flat: bool = False,
                    ) -> None:
    """Extract "/a/b" members (or "/a/*" subtrees) of an input ISO into `dest`, writable;
    `flat` drops their folders."""
    dest.mkdir(parents=True, exist_ok=True)
    argv = [seven_zip(), "e" if flat else "x", "-y", f"-o{dest}", str(iso),
            *(m.lstrip("/") for m in members)]
    proc = _tool(argv, "7zip")
    if proc.returncode not in (0, 1):  # 1: warnings only, files extracted
        raise InputError(f"could not extract {list(members)} from {iso}: "
                         f"{(proc.stderr or proc.stdout).strip()[-500:]}",
                         "check the ISO and free disk space")
    make_writable(dest)


def make_writable(path: Path) -> None:
    """ISO files come out read-only; make a tree removable again."""
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in paths:
        if not p.is_symlink():
            p.chmod(p.stat().st_mode | stat.S_IWUSR | stat.S_IRUSR | (
                stat.S_IXUSR if p.is_dir() else 0))


def build_iso(source: Path, output: Path, label: str) -> Path:
    """An ISO 9660 + Joliet + Rock Ridge image of `source` (what Windows Setup reads)."""
    proc = _tool(["xorriso", "-as", "genisoimage", "-o", str(output), "-V", label, "-J",
                  "-joliet-long", "-r", str(source)], "xorriso")
    if proc.returncode != 0:
        raise InfrastructureError(f"xorriso could not build {output}: "
                                  f"{proc.stderr.strip()[-500:]}", "check free disk space")
    return output


def stage_virtio(virtio_iso: Path, version: WindowsVersion, dest: Path) -> list[str]:
    """Copy the version's amd64 folders of VIRTIO_DRIVERS into dest/$WinPEDriver$/..."""
    files = iso_members(virtio_iso)
    present: list[str] = []
    missing: list[str] = []
    for drv in VIRTIO_DRIVERS:
        folder = f"/{drv}/{version.virtio_dir}/amd64"
        (present if any(f.startswith(folder + "/") for f in files) else missing).append(folder)
    if any(m.startswith(("/viostor/", "/NetKVM/")) for m in missing):
        raise InputError(f"{virtio_iso} has no {', '.join(missing)} (drivers for Windows "
                         f"Server {version.value})",
                         "use a newer virtio-win ISO (Server 2025 needs 0.1.262 or later)")
    extract_members(virtio_iso, [f"{p}/*" for p in present], dest / WINPE_DRIVERS)
    return present


def stage_provisioning(settings: UnattendSettings, virtio_iso: Path, dest: Path) -> Path:
    """The provisioning ISO's tree: answer file, scripts, virtio driver folders."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "Autounattend.xml").write_text(render_autounattend(settings), encoding="utf-8")
    for script in (PROVISION_SCRIPT, PROBE_SCRIPT):
        shutil.copyfile(script, dest / script.name)
    stage_virtio(virtio_iso, settings.version, dest)
    return dest


# ---- the image build --------------------------------------------------------------------------


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


def windows_iso_images(iso: Path, work: Path, progress: Progress) -> tuple[WimImage, ...]:
    """The images in the ISO's sources/install.wim (or install.esd)."""
    files = iso_members(iso)
    wims = [f for f in files if f.casefold() in ("/sources/install.wim", "/sources/install.esd")]
    if not wims:
        raise InputError(f"{iso} has no sources/install.wim or install.esd",
                         "give a Windows Server installation ISO (not the virtio-win ISO)")
    local = work / Path(wims[0]).name
    progress.say(f"extracting {wims[0]} to read its image list")
    extract_members(iso, [wims[0]], work, flat=True)
    try:
        return read_wim_images(local)
    finally:
        local.unlink(missing_ok=True)


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
        dom_spec = DomainSpec(
            name=name, profile=Profile.WINDOWS,
            vcpus=VcpuPlan(Topology(sockets=1, dies=1, cores=spec.vcpus), boot=spec.vcpus),
            serial_log=spec.logs / "serial.log", memory_mib=spec.memory_mib,
            firmware=spec.firmware, accelerator=accelerator, nvram=nvram,
            disks=(Disk(disk, bus=DiskBus.SATA),),
            cdroms=(Cdrom(spec.windows_iso.resolve()), Cdrom(prov_iso)),
            forwards=(Forward(guest_port=5985, host_port=port),),
            metadata={"purpose": "windows image build"},
        )
        return Installer(Machine.start(conn, dom_spec, scratch), conn)
    except BaseException:
        conn.close()
        raise


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
            proc = _tool(["qemu-img", "create", "-q", "-f", "qcow2", str(partial),
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


def throttled(fn: Callable[[str], None], period: float = 30.0) -> Callable[[str], None]:
    """`fn`, called at most once per `period` seconds (progress while waiting for an hour)."""
    last = [-period]

    def call(arg: str) -> None:
        now = time.monotonic()
        if now - last[0] >= period:
            last[0] = now
            fn(arg)

    return call


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
                "edition_id": pre.get("edition")},
        source_iso=spec.windows_iso.name, virtio_iso=spec.virtio_iso.name,
        provisioning={str(k): str(v) for k, v in facts["provisioning"].get("steps", {}).items()},
    )
    manifest.write(manifest_path(spec.output))
    return manifest


# ---- guest-side operations (any Transport whose shell is cmd.exe) ------------------------------


# Every hotadd-probe.ps1 function prints one JSON object. Its keys are declared once, here: a
# reply type's FUNCTION and field names (in the script's order). The script's hashtable literals
# and the WinRM test double follow them; tests/unit/test_probe_replies.py parses the script.


@dataclass(frozen=True)
class ProbeParameters:
    """The driver service's Parameters values (driver/probe_public.h); None = leave unset.
    Set-HotAddProbeParameters takes them as NAMES and replies with those that are set."""

    FUNCTION: ClassVar[str] = "Set-HotAddProbeParameters"
    NAMES: ClassVar[tuple[str, ...]] = ("Flags", "VetoIndex", "VetoStatus", "VetoDuringReplay")

    flags: int = 1
    veto_index: int | None = None
    veto_status: int | None = None
    veto_during_replay: bool | None = None

    def call(self) -> str:
        def num(v: int | bool | None) -> int:
            return -1 if v is None else int(v)

        values = (self.flags, self.veto_index, self.veto_status, self.veto_during_replay)
        return " ".join([self.FUNCTION, *(f"-{name} {num(value)}"
                                          for name, value in zip(self.NAMES, values, strict=True))])


@dataclass(frozen=True)
class DriverInstall:
    """Install-HotAddProbe's reply."""

    FUNCTION: ClassVar[str] = "Install-HotAddProbe"

    service: str
    path: str
    source: str
    signed_in_guest: bool
    signature: str
    signer: str


@dataclass(frozen=True)
class ServiceStart:
    """Start-HotAddProbe's reply: a refused start is a result (the replay-veto scenario)."""

    FUNCTION: ClassVar[str] = "Start-HotAddProbe"

    started: bool
    code: int
    state: str
    message: str


@dataclass(frozen=True)
class ServiceStop:
    """Stop-HotAddProbe's reply (code 1062: it was not running)."""

    FUNCTION: ClassVar[str] = "Stop-HotAddProbe"

    stopped: bool
    code: int
    state: str


@dataclass(frozen=True)
class RecordsText:
    """Get-HotAddRecords' reply, for people in a lab guest (the harness fetches the file in
    chunks instead); declared so its keys are checked like the others."""

    FUNCTION: ClassVar[str] = "Get-HotAddRecords"

    path: str
    exists: bool
    text: str


@dataclass(frozen=True)
class ProcessorCount:
    """Counts read in a fresh guest process: WMI's, the kernel's (all groups), .NET's."""

    FUNCTION: ClassVar[str] = "Get-HotAddProcessorCount"

    logical: int
    active_all_groups: int
    environment: int


@dataclass(frozen=True)
class Provisioning:
    """Get-HotAddProvisioning's reply: hotadd-provision.ps1's marker (None until it finished)
    and the current boot time."""

    FUNCTION: ClassVar[str] = "Get-HotAddProvisioning"

    marker: dict[str, Any] | None
    last_boot_utc: str


@dataclass(frozen=True)
class Preflight:
    """Get-HotAddPreflight's reply: can the guest take CPU hot-add and load a test-signed
    driver."""

    FUNCTION: ClassVar[str] = "Get-HotAddPreflight"

    product: str
    edition: str
    build: int
    installation_type: str
    dyn_processor_enabled: bool
    licence_dynamic_partitioning: int | None
    test_signing: bool | None
    secure_boot: bool | None
    wdf_version: str
    logical_processors: int
    last_boot_utc: str


#: Every reply type, by the function that prints it.
PROBE_REPLIES: tuple[type[DataclassInstance], ...] = (
    DriverInstall, ServiceStart, ServiceStop, RecordsText, ProcessorCount, Provisioning,
    Preflight)

_Reply = TypeVar("_Reply", bound="DataclassInstance")


def parse_reply(reply: type[_Reply], data: dict[str, Any]) -> _Reply:
    """`data` as the reply type: every declared key present, values of the declared types
    (bool/int/str converted as before, None only where the type allows it)."""
    hints = get_type_hints(reply)
    values: dict[str, Any] = {}
    function = getattr(reply, "FUNCTION", reply.__name__)
    for f in fields(reply):
        if f.name not in data:
            raise TransportError(f"{function}: the guest's reply lacks {f.name!r}: {data}",
                                 "compare vm/windows/hotadd-probe.ps1 with the guest's copy")
        values[f.name] = _reply_value(hints[f.name], data[f.name], f"{function}.{f.name}")
    return reply(**values)


def _reply_value(hint: Any, value: Any, where: str) -> Any:
    options = get_args(hint) or (hint,)
    if value is None and type(None) in options:
        return None
    for kind in options:
        if kind in (bool, int, str) and value is not None:
            try:
                return kind(value)
            except (TypeError, ValueError):
                break
        if getattr(kind, "__origin__", None) is dict and isinstance(value, dict):
            return value
    want = getattr(hint, "__name__", hint)
    raise TransportError(f"{where}: unexpected value {value!r} from the guest (want {want})",
                         "compare vm/windows/hotadd-probe.ps1 with the guest's copy")


def ps_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def probe_control(transport: Transport, call: str, timeout: float = 300.0) -> dict[str, Any]:
    """Run one hotadd-probe.ps1 function in the guest; its JSON result as a dict."""
    script = PROBE_SCRIPT.read_text(encoding="utf-8") + "\n" + call + "\n"
    res: CommandResult = run_powershell(transport, script, timeout,
                                        shown=f"hotadd-probe.ps1: {call}")
    res.check()
    lines = [ln for ln in res.stdout.splitlines() if ln.strip().startswith("{")]
    if not lines:
        raise TransportError(f"{call}: no JSON result in the guest's output: "
                             f"{res.stdout.strip()[-500:]}", "run it by hand in the guest")
    try:
        data: dict[str, Any] = json.loads(lines[-1])
    except ValueError as exc:
        raise TransportError(f"{call}: bad JSON from the guest ({exc}): {lines[-1][:300]}",
                             "run it by hand in the guest") from None
    return data


def install_driver(transport: Transport, source: str) -> DriverInstall:
    """Copy the .sys (a path, or a file name on any drive), sign it if unsigned, create the
    kernel service."""
    call = f"{DriverInstall.FUNCTION} -Source {ps_literal(source)}"
    return parse_reply(DriverInstall, probe_control(transport, call))


def set_parameters(transport: Transport, params: ProbeParameters) -> dict[str, int]:
    return {str(k): int(v) for k, v in probe_control(transport, params.call()).items()}


def start_service(transport: Transport) -> ServiceStart:
    return parse_reply(ServiceStart, probe_control(transport, ServiceStart.FUNCTION))


def stop_service(transport: Transport) -> ServiceStop:
    return parse_reply(ServiceStop, probe_control(transport, ServiceStop.FUNCTION))


def read_records(transport: Transport) -> str:
    """The records file of the last probe load ("" if the probe never wrote one). Fetched
    with cmd.exe command lines, so any Windows transport works (not only WinRM's fetch)."""
    with tempfile.TemporaryDirectory(prefix="hotadd-records-") as tmp:
        local = Path(tmp) / "records.jsonl"
        try:
            fetch_by_chunks(transport, RECORDS_PATH, local)
        except RemoteFileMissing:
            return ""
        return local.read_text(encoding="utf-8", errors="replace")


def processor_count(transport: Transport) -> ProcessorCount:
    """Processor counts from a fresh process in a fresh shell (a new WinRM shell / SSH
    connection: the old one may be a process that predates the hot-add)."""
    transport.close()
    return parse_reply(ProcessorCount, probe_control(transport, ProcessorCount.FUNCTION))


def preflight(transport: Transport, timeout: float = 300.0) -> Preflight:
    """Can the guest take CPU hot-add and load a test-signed driver (see hotadd-probe.ps1)."""
    return parse_reply(Preflight, probe_control(transport, Preflight.FUNCTION, timeout))


def wait_provisioned(transport: Transport, timeout: float,
                     still_alive: Callable[[], None] | None = None) -> dict[str, Any]:
    """Wait until the provisioning marker exists and the guest booted after writing it."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if still_alive is not None:
            still_alive()
        try:
            state = parse_reply(Provisioning,
                                probe_control(transport, Provisioning.FUNCTION, timeout=120))
            marker = state.marker
            if marker and _utc(state.last_boot_utc) > _utc(str(marker["provisioned_utc"])):
                return dict(marker)
            last = "provisioning marker missing" if not marker else "not rebooted since"
        except TransportError as exc:
            last = exc.problem  # rebooting: WinRM goes away and comes back
        time.sleep(5.0)
    raise GuestNotReady(f"provisioning did not finish in {timeout:.0f}s ({last})",
                        f"read {PROVISION_LOG} in the guest")


def _utc(text: str) -> datetime:
    """PowerShell's round-trip 'o' format (7 fraction digits) as an aware datetime."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?", text.strip())
    if not m:
        raise TransportError(f"unexpected time stamp from the guest: {text!r}",
                             "report this with the guest's PowerShell version")
    frac = (m[2] or "0")[:6].ljust(6, "0")
    tz = m[3] or "Z"
    return datetime.fromisoformat(f"{m[1]}.{frac}{'+00:00' if tz == 'Z' else tz}")


def password_from_env(name: str = PASSWORD_ENV) -> str:
    """The Administrator password from the environment (never from the command line)."""
    value = os.environ.get(name, "")
    if not value:
        raise InputError(f"the Windows Administrator password is not set (${name} is empty)",
                         f"export {name}=... (a lab password meeting Windows' complexity "
                         "rules); it is never passed on a command line")
    return value

"""Windows provisioning media: install.wim, the answer file, the ISOs Setup reads.

Everything done from Linux before Windows boots: reading the images inside install.wim (its
header and XML metadata, streamed out of the UDF media by 7-Zip), rendering
`vm/windows/Autounattend.xml.in`, and building the provisioning ISO with xorriso (answer file,
the version's virtio-win driver folders, the provisioning and probe-control PowerShell).

Secrets: the Administrator password (environment variable HOTADD_WINDOWS_PASSWORD by default)
and a product key (the environment variable named by --product-key-env) land only in the answer
file on the provisioning ISO (the password in Windows' reversible encoding); that ISO is
created mode 0600 and the image build deletes it when it ends.
"""

from __future__ import annotations

import base64
import enum
import os
import re
import shutil
import stat
import struct
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from xml.sax.saxutils import escape

from harness.errors import InfrastructureError, InputError
from harness.guests.windows_control import MIN_BUILD, PROBE_SCRIPT, VM_DIR
from harness.host.domain import Firmware

TEMPLATE = VM_DIR / "Autounattend.xml.in"
PROVISION_SCRIPT = VM_DIR / "hotadd-provision.ps1"
PASSWORD_ENV = "HOTADD_WINDOWS_PASSWORD"
PROVISION_LABEL = "HOTADD_PROV"
DRIVER_LABEL = "HOTADD_DRV"
WINPE_DRIVERS = "$WinPEDriver$"
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
    """One image inside install.wim, as its XML metadata describes it."""

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

    @property
    def evaluation(self) -> bool:
        """Evaluation media, which install without a product key: install.wim says so in the
        image's EDITIONID ("ServerStandardEval", "ServerDatacenterEval") and DISPLAYNAME
        ("Windows Server 2022 Datacenter Evaluation (Desktop Experience)")."""
        return ("eval" in self.edition_id.casefold()
                or "evaluation" in self.display_name.casefold())

    def describe(self) -> str:
        extra = f" ({self.display_name})" if self.display_name else ""
        return f"{self.index}: {self.name}{extra}"


# install.wim is read where it lies inside the ISO: 7-Zip streams the file to us and only its
# 208-byte header and its XML metadata are kept, so nothing of its gigabytes is written to
# disk. Layout: wimlib's "WIM file format" notes (wimlib.net, include/wimlib/header.h and
# resource.h): "MSWIM\0\0\0", header size, version, flags, chunk size, GUID, part number,
# total parts, image count, then 24-byte resource headers (7-byte size, 1-byte flags, 8-byte
# offset, 8-byte original size) for the blob table, the XML data, the boot metadata.
WIM_MAGIC = b"MSWIM\0\0\0"
_WIM_HEADER = struct.Struct("<8sIIII16sHHI24s24s")
_RESHDR_COMPRESSED = 0x04
#: Microsoft's install.wim XML is tens of KiB; refuse anything absurd rather than buffer it.
WIM_XML_LIMIT = 64 << 20


@dataclass(frozen=True)
class WimHeader:
    """What the image list needs from a WIM header: where its XML metadata lies."""

    image_count: int
    xml_offset: int
    xml_size: int
    xml_compressed: bool

    @classmethod
    def parse(cls, data: bytes, source: str) -> WimHeader:
        if len(data) < _WIM_HEADER.size or not data.startswith(WIM_MAGIC):
            raise InputError(f"{source} is not a WIM file (no MSWIM header)",
                             "give a Windows Server installation ISO with an intact install.wim")
        fields = _WIM_HEADER.unpack_from(data)
        xml = fields[10]
        return cls(image_count=fields[8], xml_offset=int.from_bytes(xml[8:16], "little"),
                   xml_size=int.from_bytes(xml[:7], "little"),
                   xml_compressed=bool(xml[7] & _RESHDR_COMPRESSED))


def read_wim_xml(stream: IO[bytes], source: str) -> tuple[WimHeader, str]:
    """The header and XML metadata of a WIM read front to back from `stream` (a pipe will do:
    the XML sits after the file data, which is read and dropped, never stored)."""
    head = _read_exactly(stream, _WIM_HEADER.size, source)
    header = WimHeader.parse(head, source)
    if header.xml_compressed or not 0 < header.xml_size <= WIM_XML_LIMIT \
            or header.xml_offset < _WIM_HEADER.size:
        raise InputError(f"{source} has XML metadata this harness cannot read "
                         f"({header.xml_size} bytes at {header.xml_offset}"
                         f"{', compressed' if header.xml_compressed else ''})",
                         "give Microsoft's installation ISO (its install.wim, not a converted one)")
    position = len(head)
    while position < header.xml_offset:
        chunk = stream.read(min(4 << 20, header.xml_offset - position))
        if not chunk:
            break
        position += len(chunk)
    raw = _read_exactly(stream, header.xml_size, source)
    try:
        return header, raw.decode("utf-16")  # UTF-16LE with its byte-order mark
    except UnicodeDecodeError:
        raise InputError(f"the XML metadata of {source} is not UTF-16 text",
                         "the ISO is damaged: download it again") from None


def _read_exactly(stream: IO[bytes], size: int, source: str) -> bytes:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            raise InputError(f"{source} ends early (wanted {size} bytes, got {len(data)})",
                             "the ISO is truncated or damaged: download it again")
        data += chunk
    return data


def parse_wim_xml(text: str, source: str = "install.wim") -> tuple[WimImage, ...]:
    """The images described by a WIM's XML metadata (`<WIM><IMAGE INDEX="n">...`), the same
    fields `wiminfo` prints: NAME, DISPLAYNAME, WINDOWS/EDITIONID, WINDOWS/INSTALLATIONTYPE,
    WINDOWS/VERSION/BUILD."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise InputError(f"the XML metadata of {source} is not well-formed: {exc}",
                         "the ISO is damaged: download it again") from None
    images = []
    for img in root.iterfind("IMAGE"):
        build = (img.findtext("WINDOWS/VERSION/BUILD") or "").strip()
        images.append(WimImage(
            index=int(img.get("INDEX", "0")), name=(img.findtext("NAME") or "").strip(),
            display_name=(img.findtext("DISPLAYNAME") or "").strip(),
            edition_id=(img.findtext("WINDOWS/EDITIONID") or "").strip(),
            installation_type=(img.findtext("WINDOWS/INSTALLATIONTYPE") or "").strip(),
            build=int(build) if build.isdigit() else None))
    return tuple(sorted(images, key=lambda i: i.index))


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
                         "use Windows Server 2019, 2022 or 2025 media")
    if version.build < MIN_BUILD:
        raise InputError(f"image {image.describe()} is Windows Server {version.value} (build "
                         f"{version.build}): the probe needs build {MIN_BUILD} or later "
                         "(Server 2016 ships KMDF 1.19, the driver needs 1.27)",
                         "use Windows Server 2019, 2022 or 2025 media")
    return version


PRODUCT_KEY = re.compile(r"[A-Z0-9]{5}(?:-[A-Z0-9]{5}){4}")


def check_licence(image: WimImage, product_key: str | None) -> None:
    """Evaluation media take no key; any other edition needs one, or Windows Setup stops at
    its product-key page and nothing else happens until the build's time runs out."""
    if image.evaluation and product_key is not None:
        raise InputError(
            f"image {image.describe()} is evaluation media (Edition ID {image.edition_id}), "
            "which installs without a product key; Setup would reject a retail or volume key",
            "drop --product-key-env, or use the media the key belongs to")
    if not image.evaluation and product_key is None:
        raise InputError(
            f"image {image.describe()} is not evaluation media (Edition ID "
            f"{image.edition_id or '?'}): Windows Setup would stop at the product-key page",
            "put the edition's product key (for volume-licence media, Microsoft's KMS client "
            "setup key for it) in an environment variable and pass --product-key-env NAME, or "
            "use evaluation media")


# ---- the answer file --------------------------------------------------------------------------


@dataclass(frozen=True)
class UnattendSettings:
    """What varies between rendered answer files."""

    version: WindowsVersion
    firmware: Firmware
    image: WimImage  # the image as install.wim lists it: selected by its index
    password: str = field(repr=False)
    product_key: str | None = field(default=None, repr=False)  # None: evaluation media
    computer_name: str = "HOTADD-WIN"
    locale: str = "en-US"
    drive_letters: tuple[str, ...] = ("D", "E", "F", "G")

    def __post_init__(self) -> None:
        if not self.password:
            raise InputError("the Windows Administrator password is empty",
                             f"set {PASSWORD_ENV} to a password meeting Windows' complexity rules")
        if self.product_key is not None and not PRODUCT_KEY.fullmatch(self.product_key):
            raise InputError("the product key is not five groups of five letters or digits "
                             "(XXXXX-XXXXX-XXXXX-XXXXX-XXXXX); it is not shown here",
                             "check the environment variable named by --product-key-env")
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


def _keep_block(text: str, marker: str, keep: bool, template: Path) -> str:
    """Keep (without its marker comments) or drop a `<!-- MARKER -->..<!-- /MARKER -->` block;
    every occurrence."""
    block = re.compile(rf"[ \t]*<!-- {re.escape(marker)} -->\n(.*?)"
                       rf"[ \t]*<!-- /{re.escape(marker)} -->\n", re.S)
    if not block.search(text):
        raise InfrastructureError(f"{template} lacks the {marker} block",
                                  "restore the template from git")
    return block.sub(r"\1" if keep else "", text)


def render_autounattend(settings: UnattendSettings, template: Path = TEMPLATE) -> str:
    """The answer file for `settings`; raises InfrastructureError if the result is not XML."""
    text = template.read_text(encoding="utf-8")
    for fw in Firmware:
        text = _keep_block(text, f"FIRMWARE:{fw.value}", fw is settings.firmware, template)
    text = _keep_block(text, "PRODUCT_KEY", settings.product_key is not None, template)
    paths = "\n".join(
        f'        <PathAndCredentials wcm:action="add" wcm:keyValue="{i}">'
        f"<Path>{escape(p)}</Path></PathAndCredentials>"
        for i, p in enumerate(driver_paths(settings), start=1))
    values = {
        "LOCALE": settings.locale,
        "IMAGE_INDEX": str(settings.image.index),
        "PRODUCT_KEY": settings.product_key or "",
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


def run_tool(argv: list[str], package: str,
             timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    """Run a host tool; InputError naming its Debian package if it is missing."""
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
    proc = run_tool(["xorriso", "-indev", str(iso), "-find", "/", "-type", "f"], "xorriso")
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
    proc = run_tool([seven_zip(), "l", "-slt", "-ba", str(iso)], "7zip")
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
    proc = run_tool(argv, "7zip")
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
    proc = run_tool(["xorriso", "-as", "genisoimage", "-o", str(output), "-V", label, "-J",
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



def windows_iso_images(iso: Path) -> tuple[WimImage, ...]:
    """The images in the ISO's sources/install.wim (or install.esd), read from its header and
    XML metadata as 7-Zip streams the file out of the ISO: nothing is extracted to disk."""
    files = iso_members(iso)
    wims = [f for f in files if f.casefold() in ("/sources/install.wim", "/sources/install.esd")]
    if not wims:
        raise InputError(f"{iso} has no sources/install.wim or install.esd",
                         "give a Windows Server installation ISO (not the virtio-win ISO)")
    source = f"{iso}:{wims[0]}"
    try:
        proc = subprocess.Popen([seven_zip(), "e", "-so", str(iso), wims[0].lstrip("/")],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise InputError("7-Zip is not installed", "apt-get install 7zip") from None
    assert proc.stdout is not None and proc.stderr is not None
    try:
        header, xml = read_wim_xml(proc.stdout, source)
    except InputError as exc:
        proc.kill()
        err = proc.stderr.read().decode(errors="replace").strip()
        raise InputError(exc.problem + (f" (7-Zip: {err[-300:]})" if err else ""),
                         exc.fix) from None
    finally:
        proc.kill()  # the rest of the file is not needed
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    images = parse_wim_xml(xml, source)
    if not images:
        raise InputError(f"{source} holds no images", "give a Windows Server installation ISO")
    if len(images) != header.image_count:
        raise InputError(f"{source}: the header counts {header.image_count} images, the XML "
                         f"describes {len(images)}", "the ISO is damaged: download it again")
    return images


def product_key_from_env(name: str) -> str:
    """The product key from the environment variable `name` (--product-key-env): never a
    command-line argument, never echoed."""
    value = os.environ.get(name, "").strip().upper()
    if not value:
        raise InputError(f"--product-key-env names ${name}, which is empty or unset",
                         f"export {name}=XXXXX-XXXXX-XXXXX-XXXXX-XXXXX (the product key; it is "
                         "never passed on a command line)")
    return value


def password_from_env(name: str = PASSWORD_ENV) -> str:
    """The Administrator password from the environment (never from the command line)."""
    value = os.environ.get(name, "")
    if not value:
        raise InputError(f"the Windows Administrator password is not set (${name} is empty)",
                         f"export {name}=... (a lab password meeting Windows' complexity "
                         "rules); it is never passed on a command line")
    return value

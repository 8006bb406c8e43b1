"""A saved guest restored under this run's own domain name: a per-run copy of a libvirt QEMU
save image whose embedded domain XML carries the new name and UUID.

Why a copy: virDomainRestoreFlags' `dxml` may only "alter host-specific portions of the domain
XML, such as disk paths" (libvirt API reference, virDomainRestoreFlags,
https://libvirt.org/html/libvirt-libvirt-domain.html#virDomainRestoreFlags), and libvirt checks
it with virDomainDefCheckABIStability, which refuses another name or UUID ("Target domain name
'%s' does not match source '%s'", src/conf/domain_conf.c; the same check guards
virDomainSaveImageDefineXML). A save image restored as it is therefore runs under the name it
was saved with, so two runs restoring one saved guest at once (two matrix workers, two roots,
two people on one qemu:///system) would run same-named domains. The name lives only in the
image's header, so a restore writes the header afresh with the run's name and UUID and copies
QEMU's migration stream after it unchanged, at the same offset. On a remote host
(`harness.host.target`) the header is read and written over SFTP and the stream is copied on the
host itself (`HostTarget.copy_tail`), never through this machine.

The header (src/qemu/qemu_saveimage.h, `struct _virQEMUSaveHeader`; its magic and layout are
on-disk ABI there): the 16-byte magic `LibvirtQemudSave`, then native-endian uint32 `version`
(2), `data_len`, `was_running`, `format`, `cookieOffset`, `unused[14]`; then `data_len` bytes
holding the domain XML (NUL-terminated), the save cookie from `cookieOffset` (NUL-terminated)
and zero padding (libvirt leaves 64 KiB for edits); then QEMU's stream.
"""

from __future__ import annotations

import re
import struct
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from harness.errors import DomainError
from harness.host.target import LOCAL, HostTarget

MAGIC = b"LibvirtQemudSave"
PARTIAL = b"LibvirtQemudPart"  # an image whose save did not finish
_FIELDS = struct.Struct("=5I14I")  # version, data_len, was_running, format, cookieOffset, unused
HEADER_SIZE = len(MAGIC) + _FIELDS.size  # 92


@dataclass(frozen=True)
class SaveImageHeader:
    """libvirt's header of a QEMU save image, and where QEMU's stream starts."""

    fields: tuple[int, ...]  # the 19 uint32s, as read
    xml: str
    cookie: bytes  # NUL-terminated, or b"" when the image has none

    @property
    def data_len(self) -> int:
        return self.fields[1]

    @property
    def stream_offset(self) -> int:
        return HEADER_SIZE + self.data_len


def read_header(image: Path, target: HostTarget = LOCAL) -> SaveImageHeader:
    """The header of `image` (on `target`); DomainError if it is not a complete libvirt QEMU
    save image."""
    with target.open_file(image, "rb") as f:
        magic = f.read(len(MAGIC))
        raw = f.read(_FIELDS.size)
        if magic == PARTIAL:
            raise DomainError(f"{image} is an incomplete save image (its save did not finish)",
                              "run with --cold; 'hotadd sweep' drops such saved guests")
        if magic != MAGIC or len(raw) != _FIELDS.size:
            raise DomainError(f"{image} is not a libvirt QEMU save image",
                              "run with --cold; 'hotadd sweep' drops such saved guests")
        fields = _FIELDS.unpack(raw)
        data = f.read(fields[1])
    cookie_offset = fields[4]
    if fields[0] != 2 or len(data) != fields[1] or cookie_offset > len(data):
        raise DomainError(f"{image} has a save image header this hotadd does not know "
                          f"(version {fields[0]}, data length {fields[1]})",
                          "run with --cold")
    xml_end = cookie_offset or len(data)
    xml = data[:xml_end].split(b"\0", 1)[0].decode()
    cookie = data[cookie_offset:].split(b"\0", 1)[0] + b"\0" if cookie_offset else b""
    return SaveImageHeader(fields, xml, cookie)


def renamed_xml(xml: str, name: str, domain_uuid: str) -> str:
    """`xml` (a save image's domain XML) with the domain's <name> and <uuid> replaced; the
    rest stays byte for byte as libvirt wrote it (its first <name> and <uuid> are the
    domain's own, checked on the result)."""
    out = xml
    for tag, value in (("name", name), ("uuid", domain_uuid)):
        out = re.sub(rf"<{tag}>[^<]*</{tag}>", f"<{tag}>{value}</{tag}>", out, count=1)
    root = ET.fromstring(out)
    if root.findtext("name") != name or root.findtext("uuid") != domain_uuid:
        raise DomainError("the save image's domain XML has no top-level <name> and <uuid>",
                          "run with --cold; 'hotadd sweep' drops such saved guests")
    return out


def write_renamed(image: Path, dest: Path, name: str, target: HostTarget = LOCAL) -> str:
    """Write a copy of `image` to `dest` (both on `target`) whose domain is called `name`
    under a fresh UUID; returns the copy's domain XML. The stream keeps its offset (libvirt's
    padding leaves room for a longer name), so offsets inside it, if any, stay true."""
    header = read_header(image, target)
    xml = renamed_xml(header.xml, name, str(uuid.uuid4()))
    payload = xml.encode() + b"\0"
    fields = list(header.fields)
    if header.cookie:
        fields[4] = len(payload)
        payload += header.cookie
    if len(payload) > header.data_len:
        raise DomainError(f"the renamed domain XML does not fit in {image}'s header "
                          f"({len(payload)} > {header.data_len} bytes)",
                          "use a shorter run name, or --cold")
    payload += b"\0" * (header.data_len - len(payload))
    with target.open_file(dest, "wb") as out:
        out.write(MAGIC + _FIELDS.pack(*fields) + payload)
    target.copy_tail(image, dest, header.stream_offset)
    return xml

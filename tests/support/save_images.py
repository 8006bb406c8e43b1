"""libvirt QEMU save images built byte for byte (src/qemu/qemu_saveimage.h's layout), for tests
of the per-run rename (`harness.host.saveimage`) without saving a guest."""

from __future__ import annotations

import struct
from pathlib import Path

SAVED_XML = ("<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\n"
             "  <name>hotadd-reference-save-0a1b2c3d</name>\n"
             "  <uuid>6f1c1d52-5a40-4b44-9f0e-0c4b2a6c9d11</uuid>\n"
             "  <devices><channel><target type='virtio' name='org.x'/></channel></devices>\n"
             "  <qemu:commandline><qemu:arg value='-netdev'/></qemu:commandline>\n"
             "</domain>\n")
COOKIE = b"<cookie><cpu mode='custom'/></cookie>\0"
STREAM = bytes(range(256)) * 4096  # 1 MiB standing in for QEMU's migration stream


def image_bytes(magic: bytes = b"LibvirtQemudSave", xml: str = SAVED_XML,
                version: int = 2) -> bytes:
    """An image as virQEMUSaveDataWrite lays it out: header, XML, cookie, 64 KiB padding."""
    body = xml.encode() + b"\0"
    data = body + COOKIE
    data_len = len(data) + 64 * 1024
    header = magic + struct.pack("=5I14I", version, data_len, 1, 0, len(body), *([0] * 14))
    return header + data + b"\0" * (data_len - len(data)) + STREAM


def image(path: Path, magic: bytes = b"LibvirtQemudSave", xml: str = SAVED_XML,
          version: int = 2) -> Path:
    path.write_bytes(image_bytes(magic, xml, version))
    return path

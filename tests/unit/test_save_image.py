"""A saved guest's image renamed for one run (`harness.host.saveimage`): the header is libvirt's
(src/qemu/qemu_saveimage.h), the copy names the run's domain under a fresh UUID, and QEMU's
stream follows unchanged at its old offset. Images here are built byte for byte in that layout;
the VM tests restore real ones (tests/vm/test_warm_runs.py)."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.errors import DomainError
from harness.host.saveimage import HEADER_SIZE, read_header, write_renamed
from tests.support.save_images import COOKIE, SAVED_XML, STREAM, image


def test_the_copy_names_the_run_and_keeps_the_stream_at_its_offset(tmp_path: Path) -> None:
    saved = image(tmp_path / "state.save")
    before = read_header(saved)
    xml = write_renamed(saved, tmp_path / "restore.save", "hotadd-reference-1234abcd")

    after = read_header(tmp_path / "restore.save")
    assert after.xml == xml
    root = ET.fromstring(xml)
    assert root.findtext("name") == "hotadd-reference-1234abcd"
    new_uuid = root.findtext("uuid")
    assert new_uuid is not None and new_uuid != "6f1c1d52-5a40-4b44-9f0e-0c4b2a6c9d11"
    assert str(uuid.UUID(new_uuid)) == new_uuid
    # the rest of the XML is libvirt's text, untouched
    assert xml.replace("hotadd-reference-1234abcd", "hotadd-reference-save-0a1b2c3d").replace(
        new_uuid, "6f1c1d52-5a40-4b44-9f0e-0c4b2a6c9d11") == SAVED_XML
    assert after.cookie == COOKIE
    assert after.fields[2] == 1  # was_running stays
    assert after.stream_offset == before.stream_offset
    copied = (tmp_path / "restore.save").read_bytes()
    assert copied[after.stream_offset:] == STREAM
    assert copied[:16] == b"LibvirtQemudSave" and HEADER_SIZE == 92


def test_two_copies_of_one_image_never_share_a_uuid(tmp_path: Path) -> None:
    saved = image(tmp_path / "state.save")
    a = ET.fromstring(write_renamed(saved, tmp_path / "a.save", "hotadd-reference-aaaa0000"))
    b = ET.fromstring(write_renamed(saved, tmp_path / "b.save", "hotadd-reference-bbbb0000"))
    assert a.findtext("uuid") != b.findtext("uuid")
    assert read_header(saved).xml == SAVED_XML  # the shared image is never written


@pytest.mark.parametrize(("magic", "xml", "version", "problem"), [
    (b"LibvirtQemudPart", SAVED_XML, 2, "incomplete save image"),
    (b"NotAnImageAtAll!", SAVED_XML, 2, "not a libvirt QEMU save image"),
    (b"LibvirtQemudSave", SAVED_XML, 3, "header this hotadd does not know"),
    (b"LibvirtQemudSave", "<domain type='qemu'><uuid>x</uuid></domain>", 2, "no top-level"),
])
def test_what_cannot_be_renamed_is_refused_with_the_fix(
        tmp_path: Path, magic: bytes, xml: str, version: int, problem: str) -> None:
    saved = image(tmp_path / "state.save", magic, xml, version)
    with pytest.raises(DomainError) as err:
        write_renamed(saved, tmp_path / "restore.save", "hotadd-reference-1234abcd")
    assert problem in err.value.problem and "--cold" in err.value.fix

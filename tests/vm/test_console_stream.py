"""The serial console read through libvirt's console stream (`harness.host.console`), on the
reference guest under real libvirt and QEMU: the log starts at the kernel's first line, and a
restored guest's console is attached again."""

from __future__ import annotations

import re
import socket
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from harness.guests import reference
from harness.host import storage
from harness.host.machine import Machine, run_name
from tests.support.processes import qemu_pids_mentioning
from tests.vm.test_host_hotadd import reference_spec

pytestmark = pytest.mark.vm

#: The kernel's first message (printk's first record, replayed when ttyS0 registers).
FIRST_KERNEL_LINE = re.compile(r"\[\s*0\.000000\] Linux version ")


@pytest.fixture
def guest(conn: libvirt.virConnect, reference_image: reference.ReferenceImage,
          tmp_path: Path) -> Iterator[Machine]:
    name = run_name("test-console")
    scratch = storage.run_scratch(name)
    with Machine.start(conn, reference_spec(reference_image, tmp_path, name), scratch) as m:
        m.wait_serial(re.escape(reference.READY_MARKER), 120)
        yield m
    assert not qemu_pids_mentioning(f"guest={name}"), "teardown left QEMU running"


def _first_line(text: str) -> str:
    return next(line for line in text.splitlines() if line.strip())


def test_the_serial_log_begins_with_the_first_line_the_guest_wrote(guest: Machine) -> None:
    """Started paused, resumed once the stream is attached: nothing before the first kernel
    line (no firmware output on this machine) is lost, and nothing is there but the guest's."""
    assert FIRST_KERNEL_LINE.search(_first_line(guest.serial_text())), guest.serial_text()[:400]
    live = ET.fromstring(guest.dom.XMLDesc(0))
    serial = live.find("./devices/serial")
    assert serial is not None and serial.get("type") == "pty", (
        "the console is libvirt's stream, not a file QEMU writes")
    assert "serial.log" not in guest.dom.XMLDesc(0)


def test_a_restored_guest_is_read_through_a_new_stream(guest: Machine, tmp_path: Path) -> None:
    """save + restore: the new QEMU's console is attached before it runs, appended to a copy of
    the boot console; what the guest writes after the restore (its hot-add report) arrives."""
    first = guest.console
    guest.save(tmp_path / "guest.save")
    assert first.ended, "the stream ends with the QEMU that was saved"
    restored_log = tmp_path / "restored" / "serial.log"
    restored_log.parent.mkdir()
    guest.restore(tmp_path / "guest.save", restored_log)
    assert guest.console is not first and not guest.console.ended
    assert FIRST_KERNEL_LINE.search(_first_line(restored_log.read_text())), (
        "the restored log starts as the boot console")
    plugged = guest.hotadd()
    guest.wait_serial(re.escape(reference.CPU_ONLINE_LINE.format(cpu=plugged.libvirt_id)), 60)
    assert guest.spec.serial_log == restored_log
    # the restored QEMU bound its own forward; the machine knows which port (a listener there)
    socket.create_connection(("127.0.0.1", guest.forwarded_port(22)), timeout=30).close()

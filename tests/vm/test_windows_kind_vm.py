"""The Windows guest kind's domain under real QEMU (TCG): the golden image is never written,
the driver ISO and NVRAM copy live in the run's scratch, and a vCPU hot-add goes through."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.guests import windows_control, windows_image, windows_setup
from harness.guests.windows_kind import DRIVER_FILE, WindowsKind
from harness.host.domain import Firmware
from harness.host.machine import Machine
from harness.progress import Progress
from tests.support.windows_golden import driver, golden, hardware

_ = driver  # the fixture, used by name


def test_domain_starts_under_qemu_and_takes_a_hotadd(conn, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                      driver: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(windows_setup.PASSWORD_ENV, "Run-Pa55word!")
    image = golden(tmp_path)
    before = image.read_bytes()
    guest = WindowsKind(image, driver, allow_tcg=True)
    guest.prepare(Progress(quiet=True))
    hw = hardware(tmp_path)
    spec = guest.domain_spec(hw)
    assert spec.firmware is Firmware.UEFI and spec.nvram is not None
    assert spec.nvram.parent == hw.scratch
    assert [f.guest_port for f in spec.forwards] == [5985]
    iso = spec.cdroms[0].path
    assert set(windows_setup.list_iso(iso)) == {
        f"/{DRIVER_FILE}", f"/{windows_control.PROBE_SCRIPT.name}"}
    with Machine.start(conn, spec, hw.scratch) as machine:
        root = ET.fromstring(machine.dom.XMLDesc(0))
        assert root.find("os/type").get("machine", "").startswith("pc-q35")  # type: ignore[union-attr]
        assert root.find("os/loader").get("secure") == "no"  # type: ignore[union-attr]
        assert root.find("devices/panic").get("model") == "hyperv"  # type: ignore[union-attr]
        disk = root.find("devices/disk[@device='disk']")
        assert disk is not None and disk.find("target").get("bus") == "sata"  # type: ignore[union-attr]
        backing = disk.find("backingStore/source")
        assert backing is not None and backing.get("file") == str(image.resolve())
        assert machine.qemu_view().present == 2
        plugged = machine.hotadd()
        assert plugged.libvirt_id == 2 and machine.qemu_view().present == 3
        # the image build presses space through libvirt for the ISO's boot prompt
        windows_image.Installer(machine, conn, spec.disks[0].path).press_key()
    assert image.read_bytes() == before, "the golden image is never written"
    assert not hw.scratch.exists()

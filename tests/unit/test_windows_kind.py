"""The scenario's Windows guest (harness.guests.windows_kind): what it refuses, and the domain
it describes for a golden image, started under real QEMU (TCG, a blank stand-in golden disk:
no OS boots) with the driver ISO attached, taking a vCPU hot-add. q35, OVMF without Secure
Boot, Hyper-V crash MSRs, 2 sockets x 4 cores, 2 boot vCPUs: the Windows test hardware."""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.errors import InputError
from harness.guests import windows_control, windows_image, windows_setup
from harness.guests.base import HardwareRequest
from harness.guests.windows_kind import DRIVER_FILE, WindowsKind
from harness.host import storage
from harness.host.domain import OVMF_VARS, Accelerator, Firmware, Topology, VcpuPlan
from harness.host.machine import Machine, run_name
from harness.progress import Progress


def golden(tmp_path: Path, firmware: Firmware = Firmware.UEFI) -> Path:
    image = tmp_path / "ws2022.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "1G"], check=True)
    image.chmod(0o444)
    nvram = None
    if firmware is Firmware.UEFI:
        shutil.copyfile(OVMF_VARS, windows_image.nvram_path(image))
        nvram = windows_image.nvram_path(image).name
    windows_image.GoldenManifest(
        image=image.name, windows_version="2022", edition="Windows Server 2022 SERVERDATACENTER",
        image_index=2, build=20348, firmware=firmware.value, disk_bus="sata", nvram=nvram,
        user="Administrator", winrm_port=5985, created_utc="2026-11-24T07:00:00Z",
        hotadd={"dyn_processor_enabled": True}, source_iso="ws.iso", virtio_iso="virtio.iso",
    ).write(windows_image.manifest_path(image))
    return image


@pytest.fixture
def driver(tmp_path: Path) -> Path:
    path = tmp_path / "HotAddProbe.sys"
    path.write_bytes(b"MZ stand-in driver")
    return path


def hardware(tmp_path: Path, firmware: Firmware | None = None) -> HardwareRequest:
    name = run_name("test-windows")
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    return HardwareRequest(name=name, vcpus=VcpuPlan(Topology(sockets=2, dies=1, cores=4), 2),
                           accelerator=Accelerator.TCG, run_dir=run_dir,
                           scratch=storage.run_scratch(name), memory_mib=512, firmware=firmware)


def test_prepare_refuses_what_cannot_run(tmp_path: Path, driver: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    quiet = Progress(quiet=True)
    monkeypatch.setenv(windows_setup.PASSWORD_ENV, "Run-Pa55word!")
    with pytest.raises(InputError, match="needs a golden image"):
        WindowsKind(None, driver).prepare(quiet)
    with pytest.raises(InputError, match="does not exist"):
        WindowsKind(tmp_path / "none.qcow2", driver).prepare(quiet)
    bare = tmp_path / "bare.qcow2"
    bare.write_bytes(b"")
    with pytest.raises(InputError, match="has no manifest"):
        WindowsKind(bare, driver).prepare(quiet)
    image = golden(tmp_path)
    with pytest.raises(InputError, match=r"probe driver .*missing\.sys is missing"):
        WindowsKind(image, tmp_path / "missing.sys").prepare(quiet)
    monkeypatch.delenv(windows_setup.PASSWORD_ENV)
    with pytest.raises(InputError, match="HOTADD_WINDOWS_PASSWORD"):
        WindowsKind(image, driver).prepare(quiet)


def test_refuses_tcg_and_a_firmware_mismatch(tmp_path: Path, driver: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(windows_setup.PASSWORD_ENV, "Run-Pa55word!")
    guest = WindowsKind(golden(tmp_path), driver)
    guest.prepare(Progress(quiet=True))
    hw = hardware(tmp_path, Firmware.BIOS)
    try:
        with pytest.raises(InputError, match="TCG emulation takes far too long"):
            guest.domain_spec(hw)
        guest.allow_tcg = True
        with pytest.raises(InputError, match="installed with uefi firmware"):
            guest.domain_spec(hw)
    finally:
        storage.remove_scratch(hw.scratch)


@pytest.mark.vm
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

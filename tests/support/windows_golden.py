"""A stand-in Windows golden image (an empty qcow2 with the manifest and NVRAM a real image
build leaves), a stand-in driver file and the hardware request, for tests of the Windows guest
kind that need no Windows."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.guests import windows_image
from harness.guests.base import HardwareRequest
from harness.guests.windows_kind import WindowsKind
from harness.host import storage
from harness.host.domain import OVMF_VARS, Accelerator, Firmware, Topology, VcpuPlan
from harness.host.machine import run_name
from harness.host.target import HostTarget
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


def prepared_kind(tmp_path: Path) -> WindowsKind:
    """The Windows guest kind prepared on a stand-in golden image and driver in `tmp_path`
    (HOTADD_WINDOWS_PASSWORD must be set), allowed to run under TCG."""
    probe = tmp_path / "HotAddProbe.sys"
    probe.write_bytes(b"MZ stand-in driver")
    kind = WindowsKind(golden(tmp_path), probe, allow_tcg=True)
    kind.prepare(Progress(quiet=True))
    return kind


def remote_hardware(tmp_path: Path, host: HostTarget) -> HardwareRequest:
    """`hardware` for a domain on `host`: its scratch dir made there."""
    local = hardware(tmp_path)
    storage.remove_scratch(local.scratch)
    return dataclasses.replace(local, host=host, scratch=storage.run_scratch(local.name, host))

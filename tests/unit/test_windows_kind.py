"""The scenario's Windows guest (harness.guests.windows_kind): what it refuses, and the domain
it describes for a golden image, started under real QEMU (TCG, a blank stand-in golden disk:
no OS boots) with the driver ISO attached, taking a vCPU hot-add. q35, OVMF without Secure
Boot, Hyper-V crash MSRs, 2 sockets x 4 cores, 2 boot vCPUs: the Windows test hardware."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import InputError
from harness.guests import windows_setup
from harness.guests.windows_kind import WindowsKind
from harness.host import storage
from harness.host.domain import Firmware
from harness.progress import Progress
from tests.support.windows_golden import driver, golden, hardware

_ = driver  # the fixture, used by name


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

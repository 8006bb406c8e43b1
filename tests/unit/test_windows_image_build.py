"""`hotadd image build`: input errors through the real CLI, and the build flow on real QEMU
(TCG, forced) with stand-in media: nothing installs, so the flow must stop at the install
stage with a message naming it, a screenshot and the serial log, and leave no image, no
partial disk, no provisioning ISO (it holds the password) and no running guest."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness import cli
from harness.commands import image as image_command
from harness.errors import ExitCode, GuestNotReady, InfrastructureError, InputError
from harness.guests import windows_image, windows_setup
from harness.guests.windows_image import ImageBuildSpec, StageTimeouts
from harness.guests.windows_setup import ImageSelector
from harness.host.accel import kvm_status
from harness.host.domain import Accelerator, Firmware
from harness.progress import Progress, throttled
from tests.support import windows_media
from tests.support.winrm_double import WinRMDouble

# the stand-in media, as fixtures of this module
windows_iso = windows_media.windows_iso
virtio_iso = windows_media.virtio_iso

PASSWORD = "Build-Pa55word!"
NO_KVM = kvm_status().accelerator is not Accelerator.KVM


def hotadd(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("harness.commands.image",))
    return cli.main(argv)


def base_args(windows_iso: Path, virtio_iso: Path, out: Path) -> list[str]:
    return ["image", "build", "--iso", str(windows_iso), "--virtio-iso", str(virtio_iso),
            "--edition", "Windows Server 2022 SERVERDATACENTER", "--output", str(out)]


def test_cli_registers_build_and_list() -> None:
    parser = argparse.ArgumentParser()
    image_command.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["image", "build", "--iso", "a", "--virtio-iso", "b",
                              "--edition", "2", "--output", "o"])
    assert args.firmware == "uefi" and args.disk_gib == 40 and callable(args.func)


def test_missing_password(monkeypatch: pytest.MonkeyPatch, windows_iso: Path, virtio_iso: Path,
                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(windows_setup.PASSWORD_ENV, raising=False)
    assert hotadd(base_args(windows_iso, virtio_iso, tmp_path / "g.qcow2"), monkeypatch) == 2
    assert "HOTADD_WINDOWS_PASSWORD" in capsys.readouterr().err


def test_missing_iso(monkeypatch: pytest.MonkeyPatch, virtio_iso: Path, tmp_path: Path,
                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(windows_setup.PASSWORD_ENV, PASSWORD)
    code = hotadd(base_args(tmp_path / "missing.iso", virtio_iso, tmp_path / "g.qcow2"),
                  monkeypatch)
    err = capsys.readouterr().err
    assert code == ExitCode.HARNESS_ERROR and "missing.iso does not exist" in err
    assert PASSWORD not in err


@pytest.mark.skipif(not NO_KVM, reason="this host has KVM: the refusal cannot be provoked")
def test_refuses_tcg_unless_forced(monkeypatch: pytest.MonkeyPatch, windows_iso: Path,
                                   virtio_iso: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(windows_setup.PASSWORD_ENV, PASSWORD)
    assert hotadd(base_args(windows_iso, virtio_iso, tmp_path / "g.qcow2"), monkeypatch) == 2
    err = capsys.readouterr().err
    assert "no usable KVM" in err and "--force-tcg" in err
    assert not (tmp_path / "g.qcow2").exists()


@pytest.mark.parametrize(("edition", "expected"), [
    ("Windows Server 2022 SERVERDATACENTERCORE",
     ["is not in", "2: Windows Server 2022 SERVERDATACENTER", "3: Windows 10 Pro"]),
    ("3", ["client edition", "only Windows Server editions"]),
], ids=["name-not-in-iso", "client-edition"])
def test_image_choice_errors(edition: str, expected: list[str], monkeypatch: pytest.MonkeyPatch,
                             windows_iso: Path, virtio_iso: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(windows_setup.PASSWORD_ENV, PASSWORD)
    argv = base_args(windows_iso, virtio_iso, tmp_path / "g.qcow2")
    argv[argv.index("--edition") + 1] = edition
    assert hotadd([*argv, "--force-tcg"], monkeypatch) == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err
    assert list(tmp_path.iterdir()) == [], "an input error leaves nothing behind"


def test_existing_output_is_never_overwritten(windows_iso: Path, virtio_iso: Path,
                                              tmp_path: Path) -> None:
    (tmp_path / "g.qcow2").write_text("old")
    with pytest.raises(InputError, match="already exists"):
        ImageBuildSpec(windows_iso, virtio_iso, ImageSelector(index=2), tmp_path / "g.qcow2",
                       password=PASSWORD)


def test_list_command(monkeypatch: pytest.MonkeyPatch, windows_iso: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    assert hotadd(["image", "list", "--iso", str(windows_iso)], monkeypatch) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split("\t")[:3] == ["2", "Windows Server 2022 SERVERDATACENTER",
                                        "ServerDatacenterEval"]


@pytest.mark.vm
def test_build_flow_stops_at_install_with_artifacts(windows_iso: Path, virtio_iso: Path,
                                                    tmp_path: Path) -> None:
    out = tmp_path / "golden.qcow2"
    spec = ImageBuildSpec(
        windows_iso=windows_iso, virtio_iso=virtio_iso,
        image=ImageSelector(name="Windows Server 2022 SERVERDATACENTER"), output=out,
        password=PASSWORD, firmware=Firmware.UEFI, memory_mib=512, force_tcg=True,
        timeouts=StageTimeouts(boot_keys=2, install=8, provision=5, verify=5, shutdown=5,
                               winrm_read=3))
    seen: list[object] = []

    def start(*args: object) -> windows_image.Installer:
        seen.extend(args)
        installer = windows_image.start_installer(*args)  # type: ignore[arg-type]
        seen.append(installer)
        return installer

    import io

    log = io.StringIO()
    with pytest.raises(GuestNotReady) as err:
        windows_image.build_image(spec, Progress(stream=log), start=start)
    msg = str(err.value)
    assert "image build stopped at stage 'install'" in msg
    assert str(spec.logs / "serial.log") in msg
    assert (spec.logs / "serial.log").exists()
    assert "screenshot" in msg and (spec.logs / "screenshot.png").read_bytes()[:4] == b"\x89PNG"
    assert PASSWORD not in msg and PASSWORD not in log.getvalue()
    for stage in ("read install.wim", "provisioning ISO", "disk", "boot installer", "install"):
        assert f"{stage}:" in log.getvalue()
    installer = seen[-1]
    assert isinstance(installer, windows_image.Installer) and not installer.is_running()
    assert seen[1] is Accelerator.TCG
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["golden.qcow2.build"], \
        "no partial disk, no work dir, no provisioning ISO left"


def test_restated_errors_keep_class_and_bugcheck() -> None:
    from harness.errors import GuestCrashed

    err = windows_image.restated(GuestCrashed("bsod", "look", bugcheck=(0x9F, 3, 0, 0, 0)),
                           "stage 'install': bsod", "look (screenshot x)")
    assert isinstance(err, GuestCrashed) and err.bugcheck == (0x9F, 3, 0, 0, 0)
    assert str(err) == "stage 'install': bsod\n  fix: look (screenshot x)"


def test_throttled_progress() -> None:
    seen: list[str] = []
    say = throttled(seen.append, period=60)
    for i in range(5):
        say(str(i))
    assert seen == ["0"]


class InstallerDouble(windows_image.Installer):
    """Stands for the installer VM running Windows: the Windows side itself is the WinRM
    double; this only answers what the flow asks the VM (alive? still running? artifacts)."""

    def __init__(self, double: WinRMDouble, serial_log: Path) -> None:
        self.double = double
        self.machine = SimpleNamespace(check_alive=lambda: None,
                                       spec=SimpleNamespace(serial_log=serial_log))
        self.keys = 0.0
        self.closed = False

    def press_keys(self, seconds: float) -> None:
        self.keys = seconds

    def is_running(self) -> bool:
        return not any(c.startswith("shutdown.exe /s") for c in self.double.command_lines)

    def artifacts(self, run_dir: Path) -> str:
        return f"serial log {self.machine.spec.serial_log}"

    def close(self) -> None:
        self.closed = True


def build_against_double(tmp_path: Path, windows_iso: Path, virtio_iso: Path,
                         double: WinRMDouble, provision: float = 20,
                         ) -> tuple[ImageBuildSpec, InstallerDouble, windows_image.GoldenManifest]:
    spec = ImageBuildSpec(windows_iso, virtio_iso, ImageSelector(index=2),
                          tmp_path / "golden.qcow2", password=PASSWORD, force_tcg=True,
                          timeouts=StageTimeouts(boot_keys=1, install=20, provision=provision,
                                                 verify=20, shutdown=20))
    made: list[InstallerDouble] = []

    def start(s: ImageBuildSpec, accelerator: object, disk: Path, iso: Path,
              nvram: Path | None, port: int) -> windows_image.Installer:
        assert disk.name == "golden.qcow2.partial" and disk.is_file()
        assert {"/Autounattend.xml", "/hotadd-provision.ps1"} <= set(windows_setup.list_iso(iso))
        assert nvram is not None and nvram.is_file()
        double.port = port  # the forward the VM would have: the double listens there
        double.__enter__()
        made.append(InstallerDouble(double, s.logs / "serial.log"))
        return made[0]

    try:
        manifest = windows_image.build_image(spec, Progress(quiet=True), start=start)
    finally:
        double.__exit__(None, None, None)
    return spec, made[0], manifest


def test_build_success_path_against_the_double(tmp_path: Path, windows_iso: Path,
                                               virtio_iso: Path) -> None:
    double = WinRMDouble(tmp_path / "guest", password=PASSWORD)
    double.probe.marker = {"provisioned_utc": "2026-11-24T06:59:30.0000000Z",
                           "build": 20348, "steps": {"winrm": "ok", "test signing": "ok",
                                                     "power": "failed: no"}}
    spec, installer, manifest = build_against_double(tmp_path, windows_iso, virtio_iso, double)
    out = spec.output
    assert out.is_file() and (out.stat().st_mode & 0o777) == 0o444
    assert windows_image.nvram_path(out).is_file()
    saved = windows_image.GoldenManifest.read(windows_image.manifest_path(out))
    assert saved == manifest
    assert (saved.windows_version, saved.image_index, saved.firmware) == ("2022", 2, "uefi")
    assert saved.hotadd["dyn_processor_enabled"] is True
    assert saved.hotadd["vbs_status"] == 0
    assert saved.provisioning["power"] == "failed: no"
    assert PASSWORD not in windows_image.manifest_path(out).read_text()
    assert installer.closed and installer.keys == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "golden.qcow2", "golden.qcow2.OVMF_VARS.fd", "golden.qcow2.build", "golden.qcow2.json",
        "guest"]


@pytest.mark.parametrize(("problem", "stage"), [
    ("critical step failed", "verify"), ("test signing off", "verify"),
    ("no reboot after provisioning", "provision")])
def test_build_refuses_an_unusable_guest(problem: str, stage: str, tmp_path: Path,
                                         windows_iso: Path, virtio_iso: Path) -> None:
    double = WinRMDouble(tmp_path / "guest", password=PASSWORD)
    steps = {"winrm": "ok", "test signing": "ok"}
    provisioned = "2026-11-24T06:59:30Z"
    if problem == "critical step failed":
        steps["test signing"] = "failed: bcdedit exited 1"
    elif problem == "test signing off":
        double.probe.test_signing = False
    else:
        provisioned = "2026-11-24T07:05:00Z"  # after the current boot: still the same boot
    double.probe.marker = {"provisioned_utc": provisioned, "steps": steps}
    with pytest.raises(InfrastructureError, match=f"stopped at stage '{stage}'"):
        build_against_double(tmp_path, windows_iso, virtio_iso, double, provision=2)
    assert not (tmp_path / "golden.qcow2").exists()
    assert not (tmp_path / "golden.qcow2.partial").exists()

"""`hotadd image build`: input errors through the real CLI, and the build flow on real QEMU
(TCG, forced) with stand-in media: nothing installs, so the flow must stop at the install
stage with a message naming it, a screenshot and the serial log, and leave no image, no
partial disk, no provisioning ISO (it holds the password) and no running guest."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import windows_media

from harness import cli
from harness.errors import ExitCode, GuestNotReady, InputError
from harness.guests import image_command, windows
from harness.guests.windows import ImageBuildSpec, ImageSelector, StageTimeouts
from harness.host.accel import kvm_status
from harness.host.domain import Accelerator, Firmware
from harness.progress import Progress

# the stand-in media, as fixtures of this module
windows_iso = windows_media.windows_iso
virtio_iso = windows_media.virtio_iso

PASSWORD = "Build-Pa55word!"
NO_KVM = kvm_status().accelerator is not Accelerator.KVM


def hotadd(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("harness.guests.image_command",))
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
    monkeypatch.delenv(windows.PASSWORD_ENV, raising=False)
    assert hotadd(base_args(windows_iso, virtio_iso, tmp_path / "g.qcow2"), monkeypatch) == 2
    assert "HOTADD_WINDOWS_PASSWORD" in capsys.readouterr().err


def test_missing_iso(monkeypatch: pytest.MonkeyPatch, virtio_iso: Path, tmp_path: Path,
                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(windows.PASSWORD_ENV, PASSWORD)
    code = hotadd(base_args(tmp_path / "missing.iso", virtio_iso, tmp_path / "g.qcow2"),
                  monkeypatch)
    err = capsys.readouterr().err
    assert code == ExitCode.HARNESS_ERROR and "missing.iso does not exist" in err
    assert PASSWORD not in err


@pytest.mark.skipif(not NO_KVM, reason="this host has KVM: the refusal cannot be provoked")
def test_refuses_tcg_unless_forced(monkeypatch: pytest.MonkeyPatch, windows_iso: Path,
                                   virtio_iso: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(windows.PASSWORD_ENV, PASSWORD)
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
    monkeypatch.setenv(windows.PASSWORD_ENV, PASSWORD)
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
        timeouts=StageTimeouts(boot_keys=2, install=8, provision=5, verify=5, shutdown=5))
    seen: list[object] = []

    def start(*args: object) -> windows.Installer:
        seen.extend(args)
        installer = windows.start_installer(*args)  # type: ignore[arg-type]
        seen.append(installer)
        return installer

    import io

    log = io.StringIO()
    with pytest.raises(GuestNotReady) as err:
        windows.build_image(spec, Progress(stream=log), start=start)
    msg = str(err.value)
    assert "image build stopped at stage 'install'" in msg
    assert str(spec.logs / "serial.log") in msg
    assert (spec.logs / "serial.log").exists()
    assert "screenshot" in msg and (spec.logs / "screenshot.png").read_bytes()[:4] == b"\x89PNG"
    assert PASSWORD not in msg and PASSWORD not in log.getvalue()
    for stage in ("read install.wim", "provisioning ISO", "disk", "boot installer", "install"):
        assert f"{stage}:" in log.getvalue()
    installer = seen[-1]
    assert isinstance(installer, windows.Installer) and not installer.is_running()
    assert seen[1] is Accelerator.TCG
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["golden.qcow2.build"], \
        "no partial disk, no work dir, no provisioning ISO left"


def test_restated_errors_keep_class_and_bugcheck() -> None:
    from harness.errors import GuestCrashed

    err = windows.restated(GuestCrashed("bsod", "look", bugcheck=(0x9F, 3, 0, 0, 0)),
                           "stage 'install': bsod", "look (screenshot x)")
    assert isinstance(err, GuestCrashed) and err.bugcheck == (0x9F, 3, 0, 0, 0)
    assert str(err) == "stage 'install': bsod\n  fix: look (screenshot x)"

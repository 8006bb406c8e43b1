"""`hotadd image build`: input errors through the real CLI, and the build flow against the
WS-Management double with stand-in media and an installer double (the same flow on real QEMU is
tests/vm/test_windows_image_build_vm.py)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness import cli
from harness.commands import image as image_command
from harness.errors import ExitCode, GuestNotReady, InfrastructureError, InputError
from harness.guests import windows_control, windows_image, windows_setup
from harness.guests.windows_image import ImageBuildSpec, StageTimeouts
from harness.guests.windows_setup import ImageSelector
from harness.host.accel import kvm_status
from harness.host.domain import Accelerator
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
    assert [ln.split("\t")[-1] for ln in lines] == [
        "evaluation", "evaluation", "needs --product-key-env", "needs --product-key-env"]


def test_throttled_progress() -> None:
    seen: list[str] = []
    say = throttled(seen.append, period=60)
    for i in range(5):
        say(str(i))
    assert seen == ["0"]


class InstallerDouble(windows_image.Installer):
    """Stands for the installer VM running Windows: the Windows side itself is the WinRM
    double; this only answers what the flow asks the VM (alive? still running? the disk's
    size, the screen). Setup starts writing the disk once a key was pressed, and keeps writing
    for `writes` samples (None: for ever)."""

    def __init__(self, double: WinRMDouble, serial_log: Path, setup_starts: bool = True,
                 writes: int | None = None) -> None:
        self.double = double
        # a guest that never crashes: every error stands as raised
        self.machine = SimpleNamespace(check_alive=lambda: None, cause_of=lambda exc: exc,
                                       spec=SimpleNamespace(serial_log=serial_log))
        self.keys = 0
        self.closed = False
        self.setup_starts = setup_starts
        self.writes = writes
        self.allocated = 196_608  # what qemu-img create leaves

    def press_key(self) -> None:
        self.keys += 1

    def winrm_port(self) -> int:
        return self.double.port  # the forward the VM would have: the double listens there

    def disk_allocated(self) -> int:
        if self.keys and self.setup_starts and (self.writes is None or self.writes > 0):
            self.allocated += 64 << 20
            self.writes = None if self.writes is None else self.writes - 1
        return self.allocated

    def screenshot(self, path: Path) -> Path | None:
        path.write_bytes(b"\x89PNG\r\n\x1a\n stand-in")
        return path

    def is_running(self) -> bool:
        return not any(c.startswith("shutdown.exe /s") for c in self.double.command_lines)

    def close(self) -> None:
        self.closed = True


DATACENTER = ImageSelector(index=2)


def build_against_double(tmp_path: Path, windows_iso: Path, virtio_iso: Path,
                         double: WinRMDouble, provision: float = 20,
                         image: ImageSelector = DATACENTER,
                         product_key: str | None = None, answer: list[str] | None = None,
                         installer: InstallerDouble | None = None, stall: float = 600,
                         made: list[InstallerDouble] | None = None,
                         ) -> tuple[ImageBuildSpec, InstallerDouble, windows_image.GoldenManifest]:
    """Build against the double; `answer` receives the answer file the installer VM got.
    WinRM answers only if `installer` is not given (a given one's double is never started)."""
    spec = ImageBuildSpec(windows_iso, virtio_iso, image,
                          tmp_path / "golden.qcow2", password=PASSWORD, force_tcg=True,
                          product_key=product_key, screenshot_every=600,
                          timeouts=StageTimeouts(stall=stall, install=20, provision=provision,
                                                 verify=20, shutdown=20, winrm_read=3))
    made = [] if made is None else made

    def start(s: ImageBuildSpec, accelerator: object, disk: Path, iso: Path,
              nvram: Path | None) -> windows_image.Installer:
        assert disk.name == "golden.qcow2.partial" and disk.is_file()
        assert {"/Autounattend.xml", "/hotadd-provision.ps1"} <= set(windows_setup.list_iso(iso))
        # QEMU's user under qemu:///system can open the files by name, nobody else can read
        # the one holding the password
        assert (iso.parent.stat().st_mode & 0o777) == 0o711
        assert (iso.stat().st_mode & 0o777) == 0o600
        if answer is not None:
            back = iso.with_name("answer-back")
            windows_setup.extract_members(iso, ["/Autounattend.xml"], back)
            answer.append((back / "Autounattend.xml").read_text(encoding="utf-8"))
            shutil.rmtree(back)
        assert nvram is not None and nvram.is_file()
        if installer is not None:
            made.append(installer)
            return installer
        double.__enter__()
        made.append(InstallerDouble(double, s.logs / "serial.log"))
        return made[0]

    try:
        manifest = windows_image.build_image(spec, Progress(quiet=True), start=start)
    finally:
        if installer is None:
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
    assert installer.closed and installer.keys == 1  # pressed until Setup wrote the disk
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
    guest_log = double.path(windows_control.PROVISION_LOG)
    guest_log.parent.mkdir(parents=True, exist_ok=True)
    guest_log.write_text("hotadd-provision: network profile private\n")
    with pytest.raises(InfrastructureError) as err:
        build_against_double(tmp_path, windows_iso, virtio_iso, double, provision=2)
    assert f"stopped at stage '{stage}'" in err.value.message
    assert not (tmp_path / "golden.qcow2").exists()
    assert not (tmp_path / "golden.qcow2.partial").exists()
    # WinRM is up at these stages: the guest's own provisioning log comes back with the error
    copy = tmp_path / "golden.qcow2.build" / "provision.log"
    assert f"copied to {copy}" in err.value.message
    assert copy.read_text() == "hotadd-provision: network profile private\n"


KEY = "ABCDE-12345-FGHIJ-67890-KLMNO"
NS = {"u": "urn:schemas-microsoft-com:unattend"}


def test_volume_media_without_a_key_are_refused_naming_the_fix(
        monkeypatch: pytest.MonkeyPatch, windows_iso: Path, virtio_iso: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Image 4 of the stand-in ISO says EDITIONID ServerStandard: Setup would stop at the key
    page while the build waited its whole budget."""
    monkeypatch.setenv(windows_setup.PASSWORD_ENV, PASSWORD)
    argv = base_args(windows_iso, virtio_iso, tmp_path / "g.qcow2")
    argv[argv.index("--edition") + 1] = "Windows Server 2022 SERVERSTANDARD"
    assert hotadd([*argv, "--force-tcg"], monkeypatch) == 2
    err = capsys.readouterr().err
    assert "not evaluation media (Edition ID ServerStandard)" in err
    assert "product-key page" in err and "--product-key-env NAME" in err
    assert list(tmp_path.iterdir()) == []


def test_product_key_env_must_be_set(monkeypatch: pytest.MonkeyPatch, windows_iso: Path,
                                     virtio_iso: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(windows_setup.PASSWORD_ENV, PASSWORD)
    monkeypatch.delenv("LAB_KEY", raising=False)
    argv = [*base_args(windows_iso, virtio_iso, tmp_path / "g.qcow2"),
            "--product-key-env", "LAB_KEY", "--force-tcg"]
    assert hotadd(argv, monkeypatch) == 2
    assert "$LAB_KEY, which is empty or unset" in capsys.readouterr().err


def test_product_key_reaches_the_answer_file_and_nothing_else(
        tmp_path: Path, windows_iso: Path, virtio_iso: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LAB_KEY", KEY.lower())
    key = windows_setup.product_key_from_env("LAB_KEY")
    double = WinRMDouble(tmp_path / "guest", password=PASSWORD)
    double.probe.marker = {"provisioned_utc": "2026-11-24T06:59:30Z",
                           "steps": {"winrm": "ok", "test signing": "ok"}}
    answer: list[str] = []
    spec, _, manifest = build_against_double(
        tmp_path, windows_iso, virtio_iso, double,
        image=ImageSelector(name="windows server 2022 serverstandard"), product_key=key,
        answer=answer)
    root = ET.fromstring(answer[0])
    pe = root.find("u:settings[@pass='windowsPE']/u:component[@name='Microsoft-Windows-Setup']",
                   NS)
    assert pe is not None and pe.findtext("u:UserData/u:ProductKey/u:Key", None, NS) == KEY
    assert root.findtext("u:settings[@pass='specialize']/u:component"
                         "[@name='Microsoft-Windows-Shell-Setup']/u:ProductKey", None, NS) == KEY
    # selected by the index install.wim gave it, not by the spelling on the command line
    assert pe.findtext("u:ImageInstall/u:OSImage/u:InstallFrom/u:MetaData/u:Key", None,
                       NS) == "/IMAGE/INDEX"
    assert pe.findtext("u:ImageInstall/u:OSImage/u:InstallFrom/u:MetaData/u:Value", None,
                       NS) == "4"
    assert manifest.image_index == 4
    for path in [*tmp_path.rglob("*")]:
        if path.is_file() and path.stat().st_size < 10_000_000:
            assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in repr(spec)
    captured = capsys.readouterr()
    assert KEY not in captured.out + captured.err


def test_evaluation_answer_file_selects_by_index(tmp_path: Path, windows_iso: Path,
                                                 virtio_iso: Path) -> None:
    double = WinRMDouble(tmp_path / "guest", password=PASSWORD)
    double.probe.marker = {"provisioned_utc": "2026-11-24T06:59:30Z",
                           "steps": {"winrm": "ok", "test signing": "ok"}}
    answer: list[str] = []
    build_against_double(tmp_path, windows_iso, virtio_iso, double,
                         image=ImageSelector(name="WINDOWS SERVER 2022 serverdatacenter"),
                         answer=answer)
    root = ET.fromstring(answer[0])
    assert [m.findtext("u:Key", None, NS) for m in root.iter(f"{{{NS['u']}}}MetaData")] == \
        ["/IMAGE/INDEX"]
    assert root.findtext(".//u:MetaData/u:Value", None, NS) == "2"
    assert root.find(".//u:ProductKey", NS) is None


# ---- a broken install shows in minutes ------------------------------------------------------

def _marked_double(tmp_path: Path) -> WinRMDouble:
    double = WinRMDouble(tmp_path / "guest", password=PASSWORD)
    double.probe.marker = {"provisioned_utc": "2026-11-24T06:59:30Z",
                           "steps": {"winrm": "ok", "test signing": "ok"}}
    return double


def test_setup_that_never_writes_the_disk_fails_at_boot(tmp_path: Path, windows_iso: Path,
                                                        virtio_iso: Path) -> None:
    """A missed "press any key" (OVMF shell) or a Setup page waiting for input writes nothing:
    the build stops after the stall time, having kept pressing keys, and names the last
    screenshot, instead of waiting out the install budget."""
    double = _marked_double(tmp_path)
    stuck = InstallerDouble(double, tmp_path / "golden.qcow2.build" / "serial.log",
                            setup_starts=False)
    with pytest.raises(GuestNotReady) as err:
        build_against_double(tmp_path, windows_iso, virtio_iso, double, installer=stuck,
                             stall=2)
    msg = err.value.message
    assert "stopped at stage 'boot installer'" in msg
    assert "wrote nothing to the disk in 2s" in msg and "'press any key'" in msg
    assert "--vnc" in msg and "--stall-timeout" in msg
    shots = sorted((tmp_path / "golden.qcow2.build" / "screens").iterdir())
    assert shots and f"last screenshot {shots[-1]}" in msg
    assert stuck.keys >= 2, "keys are pressed until Setup writes the disk"
    assert stuck.closed and not (tmp_path / "golden.qcow2").exists()


def test_disk_that_stops_growing_fails_the_install_stage(tmp_path: Path, windows_iso: Path,
                                                         virtio_iso: Path) -> None:
    """Setup started (one key press, the disk grew), then stopped; WinRM never answers."""
    double = _marked_double(tmp_path)
    hung = InstallerDouble(double, tmp_path / "golden.qcow2.build" / "serial.log", writes=3)
    with pytest.raises(GuestNotReady) as err:
        build_against_double(tmp_path, windows_iso, virtio_iso, double, installer=hung,
                             stall=2)
    msg = err.value.message
    assert "stopped at stage 'install'" in msg
    assert "the disk stopped growing: nothing new written for 2s (at 0.19 GiB)" in msg
    assert hung.keys == 1, "no key presses once Setup writes: one would restart Setup"


def test_disk_watch_follows_the_allocated_size(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"")
    now = [100.0]
    watch = windows_image.DiskWatch(lambda: windows_image.allocated_bytes(disk), stall=60,
                                    clock=lambda: now[0])
    now[0] = 150.0
    watch.check()  # within the stall time
    assert not watch.written
    with disk.open("r+b") as f:  # sparse: only what is written takes space
        f.seek(1 << 30)
        f.write(os.urandom(1 << 20))
    now[0] = 170.0
    watch.check()
    assert watch.written and watch.last_growth == 170.0 and watch.size >= 1 << 20
    assert watch.size < 1 << 30, "allocated size, not the apparent size"
    now[0] = 230.0
    watch.check()
    now[0] = 230.5
    with pytest.raises(GuestNotReady, match="stopped growing: nothing new written for 60s"):
        watch.check()


def test_never_written_disk_reports_the_missed_key(tmp_path: Path) -> None:
    now = [0.0]
    watch = windows_image.DiskWatch(lambda: 4096, stall=30, clock=lambda: now[0])
    now[0] = 31.0
    with pytest.raises(GuestNotReady) as err:
        watch.check()
    assert "wrote nothing to the disk in 30s" in err.value.problem
    assert "--vnc" in err.value.fix


def test_screenshots_are_numbered_and_taken_periodically(tmp_path: Path) -> None:
    taken = threading.Event()
    count = [0]

    def shoot(path: Path) -> Path | None:
        count[0] += 1
        if count[0] == 2:
            return None  # nothing to show this time (domain between states)
        path.write_bytes(b"\x89PNG")
        if count[0] >= 3:
            taken.set()
        return path

    shots = windows_image.Screenshots(shoot, tmp_path / "screens", every=0.01)
    shots.start()
    assert taken.wait(30)
    last = shots.final("failed")  # while the periodic thread still runs
    assert last is not None and last.name.endswith("-failed.png") and shots.last == last
    time.sleep(0.1)  # ten periods: a thread left running would add shots after the failure's
    names = sorted(p.name for p in (tmp_path / "screens").iterdir())
    assert names[0].startswith("0001-") and names[-1] == last.name
    assert len(names) == count[0] - 1


def test_vnc_listens_on_loopback_only() -> None:
    from harness.host.domain import (
        Cdrom,
        DomainSpec,
        GuestOS,
        Topology,
        VcpuPlan,
        to_xml,
    )

    iso = Path(windows_media.__file__)  # any existing file
    base = DomainSpec(name="hotadd-t-1", vcpus=VcpuPlan(Topology(cores=2), boot=2),
                      guest_os=GuestOS.WINDOWS, serial_log=Path("/tmp/s.log"),
                      cdroms=(Cdrom(iso),))
    assert ET.fromstring(to_xml(base)).find("./devices/graphics") is None
    root = ET.fromstring(to_xml(dataclasses.replace(base, vnc=True)))
    graphics = root.findall("./devices/graphics")
    assert len(graphics) == 1
    g = graphics[0]
    assert (g.get("type"), g.get("autoport"), g.get("listen")) == ("vnc", "yes", "127.0.0.1")
    assert [(el.get("type"), el.get("address")) for el in g.findall("listen")] == \
        [("address", "127.0.0.1")]
    assert g.get("port") is None and g.get("passwd") is None


def test_cli_wires_the_watch_options() -> None:
    parser = argparse.ArgumentParser()
    image_command.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["image", "build", "--iso", "a", "--virtio-iso", "b",
                              "--edition", "2", "--output", "o"])
    assert (args.stall_timeout, args.screenshot_every, args.vnc) == (600.0, 30.0, False)
    args = parser.parse_args(["image", "build", "--iso", "a", "--virtio-iso", "b",
                              "--edition", "2", "--output", "o", "--stall-timeout", "90",
                              "--screenshot-every", "5", "--vnc"])
    assert (args.stall_timeout, args.screenshot_every, args.vnc) == (90.0, 5.0, True)


@pytest.fixture
def searchable_dir() -> Iterator[Path]:
    """A directory every user can search (pytest's own temporary directories are private)."""
    path = Path(tempfile.mkdtemp(prefix="hotadd-test-", dir="/var/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("private", ["iso", "output"])
def test_system_libvirt_unreachable_files_are_refused_up_front(
        private: str, monkeypatch: pytest.MonkeyPatch, windows_iso: Path, virtio_iso: Path,
        searchable_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Under qemu:///system QEMU runs as libvirt's own user: a Windows ISO or an output
    directory it cannot reach is an input error naming the directory and the fix, before
    anything is built (and before libvirt is even asked)."""
    monkeypatch.setenv(windows_setup.PASSWORD_ENV, PASSWORD)
    shared = searchable_dir / "shared"
    closed = searchable_dir / "closed"
    for d, mode in ((shared, 0o755), (closed, 0o700)):
        d.mkdir()
        d.chmod(mode)
    iso = (closed if private == "iso" else shared) / "ws2022.iso"
    shutil.copyfile(windows_iso, iso)
    out = (closed if private == "output" else shared) / "g.qcow2"
    argv = ["image", "build", "--iso", str(iso), "--virtio-iso", str(virtio_iso),
            "--edition", "2", "--output", str(out), "--force-tcg",
            "--libvirt-uri", "qemu:///system"]
    assert hotadd(argv, monkeypatch) == 2
    err = capsys.readouterr().err
    assert f"is under {closed}, which other users cannot search" in err
    assert f"chmod o+x {closed}" in err
    left = sorted(p.relative_to(searchable_dir).as_posix() for p in searchable_dir.rglob("*"))
    assert left == sorted(["closed", "shared", iso.relative_to(searchable_dir).as_posix()])

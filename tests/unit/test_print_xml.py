"""`hotadd run --print-xml` and `hotadd image build --print-xml`: the domain XML a run or an
image build would define, printed without starting, creating or reading anything (as
virt-install's --print-xml), validated with libvirt's own schema (virt-xml-validate) for both
guest kinds, both firmwares and both accelerators."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import cli, paths
from tests.support.domain_xml import validate


def hotadd(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def scratch_entries() -> set[str]:
    d = paths.scratch_dir()
    return {p.name for p in d.iterdir()} if d.is_dir() else set()


@pytest.mark.parametrize("accel", ["kvm", "tcg"])
@pytest.mark.parametrize(("guest", "firmware"),
                         [("reference", "bios"), ("windows", "bios"), ("windows", "uefi")])
def test_run_prints_valid_xml_and_starts_nothing(guest: str, firmware: str, accel: str,
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("HOTADD_WINDOWS_PASSWORD", raising=False)
    before = scratch_entries()
    run_dir = tmp_path / "run"
    windows_inputs = ["--image", str(tmp_path / "missing.qcow2"),
                      "--driver", str(tmp_path / "none.sys")] if guest == "windows" else []
    code, out, _err = hotadd(
        ["run", "--guest", guest, "--accel", accel, "--firmware", firmware, *windows_inputs,
         "--sockets", "2", "--cores", "2", "--boot-vcpus", "2", "--run-dir", str(run_dir),
         "--print-xml"], capsys)
    assert code == 0
    root = validate(out, tmp_path)
    assert root.get("type") == ("kvm" if accel == "kvm" else "qemu")
    assert (root.find("os/loader") is not None) == (firmware == "uefi")
    assert root.findtext("vcpu") == "4"
    if guest == "windows":
        assert root.find("features/hyperv") is not None
        assert {f.get("name") for f in root.iterfind("cpu/feature")} >= {"vmx", "sgx"}
    assert not run_dir.exists(), "nothing is written"
    assert scratch_entries() == before, "no scratch directory is created"


def test_reference_guest_has_no_uefi(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = hotadd(["run", "--guest", "reference", "--firmware", "uefi",
                              "--print-xml"], capsys)
    assert code == 2 and "without firmware" in err and "--firmware bios" in err


@pytest.mark.parametrize("tcg", [False, True], ids=["kvm", "tcg"])
@pytest.mark.parametrize("firmware", ["uefi", "bios"])
def test_image_build_prints_valid_xml_without_media_or_password(
        firmware: str, tcg: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("HOTADD_WINDOWS_PASSWORD", raising=False)
    output = tmp_path / "ws.qcow2"
    code, out, _err = hotadd(
        ["image", "build", "--iso", str(tmp_path / "no.iso"), "--virtio-iso",
         str(tmp_path / "no-virtio.iso"), "--edition", "2", "--output", str(output),
         "--firmware", firmware, "--print-xml", *(["--force-tcg"] if tcg else [])], capsys)
    assert code == 0
    root = validate(out, tmp_path)
    assert root.get("type") == ("qemu" if tcg else "kvm")
    sources = [s.get("file") for s in root.iterfind("devices/disk/source")]
    assert str(tmp_path / "no.iso") in sources
    assert (root.find("os/nvram") is not None) == (firmware == "uefi")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["domain.xml"], "nothing created"

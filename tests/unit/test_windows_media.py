"""install.wim reading, ISO checks and the provisioning ISO, with the real tools (wimtools,
xorriso) on small media made here: a real WIM captured with wimcapture and given the image
properties a Windows Server install.wim carries, inside a real ISO 9660 image."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from harness.errors import InputError
from harness.guests import windows_setup
from harness.guests.windows_setup import ImageSelector, UnattendSettings, WimImage, WindowsVersion
from harness.host.domain import Firmware
from tests.support import windows_media

# the stand-in media, as fixtures of this module
windows_iso = windows_media.windows_iso
virtio_iso = windows_media.virtio_iso


def test_windows_iso_files_live_in_udf(windows_iso: Path) -> None:
    """Why input ISOs are read with 7-Zip: xorriso sees only the ISO 9660 bridge."""
    assert windows_setup.list_iso(windows_iso) == ["/README.TXT"]
    assert {"/sources/install.wim", "/setup.exe"} <= set(windows_setup.iso_members(windows_iso))
    windows_setup.check_readable_iso(windows_iso, "Windows ISO")


def test_images_of_a_real_wim_inside_the_iso(windows_iso: Path, tmp_path: Path) -> None:
    images = windows_setup.windows_iso_images(windows_iso)
    assert [i.index for i in images] == [1, 2, 3, 4]
    assert [i.evaluation for i in images] == [True, True, False, False]
    dc = images[1]
    assert dc == WimImage(index=2, name="Windows Server 2022 SERVERDATACENTER",
                          display_name=windows_media.SERVER_2022["DISPLAYNAME"],
                          edition_id="ServerDatacenterEval", installation_type="Server",
                          build=20348)
    assert dc.version is WindowsVersion.WS2022
    assert windows_setup.check_edition(dc) is WindowsVersion.WS2022


def test_image_name_not_in_the_iso_lists_the_ones_present(windows_iso: Path,
                                                          tmp_path: Path) -> None:
    images = windows_setup.windows_iso_images(windows_iso)
    assert ImageSelector.parse("windows server 2022 serverdatacenter").pick(images, "x").index == 2
    assert ImageSelector(index=1).pick(images, "x").name.endswith("SERVERSTANDARDCORE")
    with pytest.raises(InputError) as err:
        ImageSelector(name="Windows Server 2022 SERVERDATACENTERCORE").pick(images, "the ISO")
    msg = str(err.value)
    assert "is not in the ISO" in msg
    for img in images:
        assert f"{img.index}: {img.name}" in msg
    with pytest.raises(InputError, match="is not in"):
        ImageSelector(index=9).pick(images, "the ISO")


def test_client_editions_are_refused(windows_iso: Path, tmp_path: Path) -> None:
    images = windows_setup.windows_iso_images(windows_iso)
    with pytest.raises(InputError, match=r"client edition.*only Windows Server"):
        windows_setup.check_edition(images[2])
    with pytest.raises(InputError, match="cannot tell which Windows Server release"):
        windows_setup.check_edition(WimImage(index=1, name="Mystery", edition_id="ServerFoo",
                                       build=99999))


def test_server_2016_is_refused_before_anything_is_installed() -> None:
    """The preflight would refuse it hours later: Server 2016 ships KMDF 1.19."""
    old = WimImage(index=2, name="Windows Server 2016 SERVERDATACENTER",
                   edition_id="ServerDatacenter", installation_type="Server", build=14393)
    with pytest.raises(InputError, match=r"KMDF 1\.19"):
        windows_setup.check_edition(old)


def wiminfo_fields(wim: Path) -> list[dict[str, str]]:
    """wimtools' own reading of the WIM: the oracle for ours."""
    out = subprocess.run(["wiminfo", str(wim)], capture_output=True, text=True,
                         check=True).stdout
    blocks = out.split("Available Images:", 1)[1].split("\n\n")
    return [dict((k.strip(), v.strip()) for k, v in (ln.split(":", 1) for ln in b.splitlines()
                                                     if ":" in ln))
            for b in blocks if "Index:" in b]


def test_metadata_read_from_the_stream_matches_wiminfo(tmp_path: Path) -> None:
    wim = windows_media.make_wim(tmp_path / "install.wim", tmp_path, [
        ("Windows Server 2022 SERVERSTANDARD", windows_media.SERVER_2022_VOLUME),
        ("Windows Server 2022 SERVERDATACENTER", windows_media.SERVER_2022)])
    with wim.open("rb") as f:
        header, xml = windows_setup.read_wim_xml(f, str(wim))
    assert header.image_count == 2 and not header.xml_compressed
    ours = windows_setup.parse_wim_xml(xml)
    theirs = wiminfo_fields(wim)
    assert [(str(i.index), i.name, i.display_name, i.edition_id, i.installation_type,
             str(i.build)) for i in ours] == \
        [(t["Index"], t["Name"], t["Display Name"], t["Edition ID"], t["Installation Type"],
          t["Build"]) for t in theirs]


def test_not_a_wim_is_refused(tmp_path: Path) -> None:
    import io

    with pytest.raises(InputError, match="not a WIM file"):
        windows_setup.read_wim_xml(io.BytesIO(b"PK\3\4" + b"\0" * 300), "x.wim")
    wim = windows_media.make_wim(tmp_path / "i.wim", tmp_path, [("A", {})])
    with pytest.raises(InputError, match="ends early"):
        windows_setup.read_wim_xml(io.BytesIO(wim.read_bytes()[:-10]), "i.wim")


@pytest.fixture(scope="module")
def big_windows_iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in whose install.wim carries 48 MiB of incompressible file data before its XML
    (Microsoft's carries gigabytes)."""
    tmp = tmp_path_factory.mktemp("bigiso")
    src = tmp / "wimsrc" / "Windows" / "System32"
    src.mkdir(parents=True)
    (src / "big.dat").write_bytes(os.urandom(48 << 20))
    wim = tmp / "tree" / "sources" / "install.wim"
    wim.parent.mkdir(parents=True)
    subprocess.run(["wimcapture", "--compress=none", str(tmp / "wimsrc"), str(wim),
                    "Windows Server 2022 SERVERDATACENTER"], check=True, capture_output=True)
    props = [a for k, v in windows_media.SERVER_2022.items()
             for a in ("--image-property", f"{k}={v}")]
    subprocess.run(["wiminfo", str(wim), "1", *props], check=True, capture_output=True)
    shutil.rmtree(tmp / "wimsrc")
    return windows_media.make_udf_bridge_iso(tmp / "tree", tmp / "big.iso", "SSS_X64FREE")


def test_image_list_extracts_nothing(big_windows_iso: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`hotadd image list` reads install.wim's header and XML as 7-Zip streams it: no copy of
    the WIM lands in the working directory or beside the ISO, and it needs no temporary
    directory at all (the one it would use does not exist)."""
    from harness import cli

    wim_size = (48 << 20)
    empty = {name: tmp_path / name for name in ("cwd", "home")}
    for d in empty.values():
        d.mkdir()
    monkeypatch.setenv("HOME", str(empty["home"]))
    monkeypatch.chdir(empty["cwd"])
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-temporary-directory"))
    before = sorted(p.name for p in big_windows_iso.parent.iterdir())
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("harness.commands.image",))
    assert cli.main(["image", "list", "--iso", str(big_windows_iso)]) == 0
    assert capsys.readouterr().out.split("\t")[:3] == ["1", "Windows Server 2022 SERVERDATACENTER",
                                                       "ServerDatacenterEval"]
    for d in empty.values():
        assert list(d.rglob("*")) == [], f"{d} was written to"
    assert sorted(p.name for p in big_windows_iso.parent.iterdir()) == before
    assert big_windows_iso.stat().st_size > wim_size  # the WIM really is that big


def test_missing_unreadable_and_wrong_isos(tmp_path: Path, windows_iso: Path,
                                           virtio_iso: Path) -> None:
    with pytest.raises(InputError, match=r"Windows ISO .*nope.iso does not exist"):
        windows_setup.check_readable_iso(tmp_path / "nope.iso", "Windows ISO")
    with pytest.raises(InputError, match="is not a file"):
        windows_setup.check_readable_iso(tmp_path, "Windows ISO")
    junk = tmp_path / "junk.iso"
    junk.write_bytes(b"\0" * 40000)
    with pytest.raises(InputError, match="is not an ISO 9660 / UDF image"):
        windows_setup.check_readable_iso(junk, "Windows ISO")
    windows_setup.check_readable_iso(windows_iso, "Windows ISO")
    with pytest.raises(InputError, match=r"no sources/install\.wim"):
        windows_setup.windows_iso_images(virtio_iso)


def test_provisioning_iso_contents_listed_back(virtio_iso: Path, tmp_path: Path) -> None:
    settings = UnattendSettings(WindowsVersion.WS2022, Firmware.UEFI,
                                WimImage(index=2, name="Windows Server 2022 SERVERDATACENTER"),
                                password="Lab-Pa55word!")
    tree = windows_setup.stage_provisioning(settings, virtio_iso, tmp_path / "prov")
    iso = windows_setup.build_iso(tree, tmp_path / "provision.iso", windows_setup.PROVISION_LABEL)
    files = set(windows_setup.list_iso(iso))
    assert {"/Autounattend.xml", "/hotadd-provision.ps1", "/hotadd-probe.ps1"} <= files
    for drv in windows_setup.VIRTIO_DRIVERS:
        assert f"/$WinPEDriver$/{drv}/2k22/amd64/{drv.lower()}.inf" in files
    assert not any("/2k19/" in f or "/w11/" in f or "Balloon" in f for f in files)
    label = subprocess.run(["xorriso", "-indev", str(iso), "-pvd_info"], capture_output=True,
                           text=True, check=True).stdout
    assert f"Volume Id    : {windows_setup.PROVISION_LABEL}" in label
    back = tmp_path / "back"
    windows_setup.extract_members(iso, ["/Autounattend.xml"], back)
    assert (back / "Autounattend.xml").read_text() == (tree / "Autounattend.xml").read_text()
    assert "Lab-Pa55word!" not in (back / "Autounattend.xml").read_text()


def test_virtio_iso_without_the_version_folders(virtio_iso: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no /viostor/2k25/amd64.*Server 2025"):
        windows_setup.stage_virtio(virtio_iso, WindowsVersion.WS2025, tmp_path)

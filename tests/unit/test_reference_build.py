"""Building the reference guest: cache behaviour, initramfs contents, keys, probe module."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import paramiko
import pytest

from harness import paths
from harness.errors import InfrastructureError, InputError
from harness.guests import reference
from harness.guests.cpio import CpioWriter
from harness.guests.reference import ProbeParams, ReferenceImage
from harness.transport.ssh import parse_host_key


def _cpio_listing(archive: Path) -> dict[str, str]:
    """GNU cpio's own reading of an archive: name -> `ls -l`-style mode string."""
    out = subprocess.run(["cpio", "-itv", "--quiet", "-F", str(archive)],
                         capture_output=True, text=True, check=True).stdout
    listing = {}
    for line in out.splitlines():
        tokens = line.split()  # names here have no spaces; symlinks end "name -> target"
        name = tokens[tokens.index("->") - 1] if "->" in tokens else tokens[-1]
        listing[name] = tokens[0]
    return listing


def _cpio_extract(archive: Path, member: str, dest: Path) -> bytes:
    subprocess.run(["cpio", "-id", "--quiet", "--no-absolute-filenames", "-F", str(archive),
                    member], cwd=dest, check=True)
    return (dest / member).read_bytes()


def test_build_is_cached(reference_image: ReferenceImage, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_rebuild(*_args: object) -> None:
        raise AssertionError("the same inputs were built again")

    monkeypatch.setattr(reference, "_build_into", no_rebuild)
    again = reference.build()
    assert again == reference_image
    assert reference_image.build_dir.parent == paths.guests_dir() / "reference"
    assert reference_image.kernel.is_file() and reference_image.initrd.is_file()
    assert reference_image.cmdline.startswith("console=ttyS0")


def test_private_key_is_private_and_authorized(reference_image: ReferenceImage,
                                               tmp_path: Path) -> None:
    assert stat.S_IMODE(reference_image.private_key.stat().st_mode) == 0o600
    key = paramiko.PKey.from_path(reference_image.private_key)
    authorized = _cpio_extract(reference_image.initrd, "root/.ssh/authorized_keys",
                               tmp_path).decode()
    assert authorized.split()[:2] == [key.get_name(), key.get_base64()]
    host_key = parse_host_key(reference_image.host_key_line)
    assert host_key.get_name() == "ssh-ed25519"
    assert reference_image.private_key.read_text().count("PRIVATE KEY") == 2  # not in image.json
    assert "PRIVATE" not in (reference_image.build_dir / "image.json").read_text()


def test_initramfs_contents(reference_image: ReferenceImage, tmp_path: Path) -> None:
    listing = _cpio_listing(reference_image.initrd)
    assert listing["init"].startswith("-rwx")
    assert listing["dev/console"].startswith("c")
    for name in ("bin/busybox", "bin/dropbear", "bin/hotadd-hotplug", "etc/dropbear/host_key",
                 reference.GUEST_PROBE_PATH.lstrip("/"), "lib/ld-linux-x86-64.so.2"):
        assert name in listing, name
    modules = _cpio_extract(reference_image.initrd, "etc/hotadd/modules", tmp_path).decode().split()
    for needed in ("virtio.ko", "virtio_pci.ko", "virtio_net.ko", "pvpanic-mmio.ko"):
        assert needed in modules
        assert f"lib/modules/{needed}" in listing
    # dependencies before their users
    assert modules.index("virtio.ko") < modules.index("virtio_pci.ko")
    assert modules.index("pvpanic.ko") < modules.index("pvpanic-mmio.ko")


def test_probe_module_matches_the_guest_kernel(reference_image: ReferenceImage) -> None:
    ko = str(reference_image.build_dir / "hotadd_probe.ko")
    vermagic = subprocess.run(["modinfo", "-F", "vermagic", ko],
                              capture_output=True, text=True, check=True).stdout
    assert vermagic.split()[0] == reference_image.kernel_version
    params = subprocess.run(["modinfo", "-F", "parm", ko],
                            capture_output=True, text=True, check=True).stdout
    assert {"veto_cpu", "veto_errno", "flags"} <= {p.split(":")[0] for p in params.splitlines()}


@pytest.mark.parametrize("source", [reference.PROBE_SOURCE_DIR, reference.EXAMPLE_SOURCE_DIR],
                         ids=["probe", "example"])
def test_modules_build_warning_free(reference_image: ReferenceImage, tmp_path: Path,
                                    source: Path) -> None:
    src = tmp_path / source.name
    shutil.copytree(source, src)
    proc = subprocess.run(["make", f"KDIR=/usr/src/linux-headers-{reference_image.kernel_version}"],
                          cwd=src, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "warning:" not in (proc.stdout + proc.stderr).lower()
    assert not list(source.glob("*.o")), "built into the source tree"


def test_the_example_module_is_built_for_the_guest_kernel(
        reference_image: ReferenceImage) -> None:
    info = reference.check_module(reference.example_module(reference_image),
                                  reference_image.kernel_version, [("size_by", "online")])
    assert info.name == "hotadd_example" and info.parameters == {"size_by"}


def test_inputs_hash_follows_the_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    versions = reference._versions()
    before = reference._inputs_hash(versions)
    copy = tmp_path / "vm" / "reference"
    shutil.copytree(reference.SOURCE_DIR, copy)
    monkeypatch.setattr(reference, "SOURCE_DIR", copy)
    assert reference._inputs_hash(versions) == before
    (copy / "init").write_text((copy / "init").read_text() + "# changed\n")
    assert reference._inputs_hash(versions) != before


def test_missing_headers_name_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reference, "_package_version", lambda package: None)
    with pytest.raises(InfrastructureError, match="apt-get install linux-headers-amd64"):
        reference.build()


def test_force_rebuild_from_scratch(reference_image: ReferenceImage, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A full build in an empty cache (the kernel .deb copied over to spare the download)."""
    monkeypatch.setenv("HOTADD_CACHE_DIR", str(tmp_path))
    shutil.copytree(reference_image.build_dir.parent / "debs",
                    tmp_path / "guests" / "reference" / "debs")
    fresh = reference.build(force=True)
    assert fresh.build_dir.name == reference_image.build_dir.name  # same inputs, same key
    assert fresh.build_dir.parent == tmp_path / "guests" / "reference"
    assert fresh.host_key_line != reference_image.host_key_line  # new keys per build
    assert fresh.kernel.read_bytes() == reference_image.kernel.read_bytes()
    assert not [p for p in fresh.build_dir.parent.iterdir() if p.name.startswith(".build-")]


def test_cpio_writer_round_trips_through_gnu_cpio(tmp_path: Path) -> None:
    w = CpioWriter()
    w.directory("etc")
    w.file("etc/odd-size", b"abc", 0o640)
    w.parents_and_file("a/b/c", b"", 0o600)
    w.symlink("link", "etc/odd-size")
    w.char_device("null", 0o666, 1, 3)
    archive = tmp_path / "x.cpio"
    archive.write_bytes(w.finish())
    listing = _cpio_listing(archive)
    assert listing == {"etc": "drwxr-xr-x", "etc/odd-size": "-rw-r-----", "a": "drwxr-xr-x",
                       "a/b": "drwxr-xr-x", "a/b/c": "-rw-------", "link": "lrwxrwxrwx",
                       "null": "crw-rw-rw-"}
    assert _cpio_extract(archive, "etc/odd-size", tmp_path) == b"abc"


def test_probe_params() -> None:
    assert ProbeParams().insmod_args() == ["flags=1", "veto_cpu=-1", "veto_errno=12"]
    assert ProbeParams(flags=0, veto_cpu=3, veto_errno=5).insmod_args() == [
        "flags=0", "veto_cpu=3", "veto_errno=5"]
    for bad in ({"flags": 2}, {"veto_cpu": -2}, {"veto_errno": 0}):
        with pytest.raises(InputError):
            ProbeParams(**bad)


def test_cpu_list_and_console_records() -> None:
    assert reference.parse_cpu_list("0-1,3\n") == frozenset({0, 1, 3})
    assert reference.parse_cpu_list("0\n") == frozenset({0})
    log = (
        '[ 1.0] hotadd-probe: {"v":1,"seq":1,"kind":"driver","event":"load"}\n'
        '[ 1.1] hotadd-probe: {"v":1,"seq":2,"kind":"driver","event":"unload"}\n'
        "hotadd-guest: cpu2 online\n"
        '[ 2.0] hotadd-probe: {"v":1,"seq":1,"kind":"driver","event":"load"}\n'
        "[ 2.1] hotadd-probe: cpu2 went offline (not a notification)\n"
        '[ 2.2] hotadd-probe: {"v":1,"seq":2,"kind":"driver","event":"registered"}\n'
    )
    assert reference.records_from_console(log) == (
        '{"v":1,"seq":1,"kind":"driver","event":"load"}\n'
        '{"v":1,"seq":2,"kind":"driver","event":"registered"}\n')
    assert reference.records_from_console("nothing here") == ""

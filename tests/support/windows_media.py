"""Stand-in Windows media for tests: a real WIM (wimcapture) carrying the image properties a
Windows Server install.wim has, inside an ISO built the way Microsoft's are (UDF holding the
files, an ISO 9660 bridge holding only README.TXT); and a virtio-win-shaped ISO 9660 image."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pycdlib
import pytest

SERVER_2022 = {
    "WINDOWS/EDITIONID": "ServerDatacenterEval", "WINDOWS/INSTALLATIONTYPE": "Server",
    "WINDOWS/VERSION/BUILD": "20348", "WINDOWS/PRODUCTTYPE": "ServerNT",
    "DISPLAYNAME": "Windows Server 2022 Datacenter Evaluation (Desktop Experience)",
}
#: what volume-licence (non-evaluation) media say: Setup needs a product key for these
SERVER_2022_VOLUME = {**SERVER_2022, "WINDOWS/EDITIONID": "ServerStandard",
                      "DISPLAYNAME": "Windows Server 2022 Standard (Desktop Experience)"}
CLIENT = {"WINDOWS/EDITIONID": "Professional", "WINDOWS/INSTALLATIONTYPE": "Client",
          "WINDOWS/VERSION/BUILD": "19045"}


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def make_wim(path: Path, tmp: Path, images: list[tuple[str, dict[str, str]]]) -> Path:
    src = tmp / "wimsrc"
    (src / "Windows" / "System32").mkdir(parents=True, exist_ok=True)
    (src / "Windows" / "System32" / "ntoskrnl.exe").write_bytes(b"MZ" + b"\0" * 64)
    path.parent.mkdir(parents=True, exist_ok=True)
    for i, (name, props) in enumerate(images, start=1):
        run("wimappend" if i > 1 else "wimcapture", str(src), str(path), name)
        if props:
            args = [a for k, v in props.items() for a in ("--image-property", f"{k}={v}")]
            run("wiminfo", str(path), str(i), *args)
    return path


def make_iso(tree: Path, out: Path, label: str) -> Path:
    run("xorriso", "-as", "genisoimage", "-o", str(out), "-V", label, "-J", "-r", str(tree))
    return out


UDF_README = b'This disc contains a "UDF" file system and requires an operating system\r\n'


def make_udf_bridge_iso(tree: Path, out: Path, label: str) -> Path:
    """Like oscdimg -u2: every file in UDF, the ISO 9660 tree only has README.TXT."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, udf="2.60", vol_ident=label)
    iso.add_fp(io.BytesIO(UDF_README), len(UDF_README), iso_path="/README.TXT;1",
               udf_path="/README.TXT")
    for path in sorted(tree.rglob("*")):
        udf = "/" + path.relative_to(tree).as_posix()
        if path.is_dir():
            iso.add_directory(udf_path=udf)
        else:
            iso.add_file(str(path), udf_path=udf)
    iso.write(str(out))
    iso.close()
    return out


@pytest.fixture(scope="module")
def windows_iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("winiso")
    make_wim(tmp / "tree" / "sources" / "install.wim", tmp, [
        ("Windows Server 2022 SERVERSTANDARDCORE", {**SERVER_2022,
                                                    "WINDOWS/EDITIONID": "ServerStandardEval"}),
        ("Windows Server 2022 SERVERDATACENTER", SERVER_2022),
        ("Windows 10 Pro", CLIENT),
        ("Windows Server 2022 SERVERSTANDARD", SERVER_2022_VOLUME),
    ])
    (tmp / "tree" / "setup.exe").write_bytes(b"MZ")
    return make_udf_bridge_iso(tmp / "tree", tmp / "server2022.iso", "SSS_X64FREE_EN-US_DV9")


@pytest.fixture(scope="module")
def virtio_iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("virtio")
    tree = tmp / "tree"
    for drv in ("viostor", "vioscsi", "NetKVM", "vioserial", "Balloon"):
        for ver in ("2k19", "2k22", "w11"):
            d = tree / drv / ver / "amd64"
            d.mkdir(parents=True)
            (d / f"{drv.lower()}.inf").write_text(f"; {drv} {ver}\n")
            (d / f"{drv.lower()}.sys").write_bytes(b"MZ" + drv.encode())
    (tree / "virtio-win-gt-x64.msi").write_bytes(b"msi")
    return make_iso(tree, tmp / "virtio-win.iso", "virtio-win-0.1.240")

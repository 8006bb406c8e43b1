"""`hotadd image build` on real QEMU (TCG, forced) with stand-in media: nothing installs, so
the flow must stop at the install stage with a message naming it, a screenshot and the serial
log, and leave no image, no partial disk, no provisioning ISO (it holds the password) and no
running guest."""

from __future__ import annotations

import io
import re
import socket
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.errors import GuestNotReady
from harness.guests import windows_image
from harness.guests.windows_image import ImageBuildSpec, StageTimeouts
from harness.guests.windows_setup import ImageSelector
from harness.host.domain import Accelerator, Firmware
from harness.progress import Progress
from tests.support import windows_media

# the stand-in media, as fixtures of this module
windows_iso = windows_media.windows_iso
virtio_iso = windows_media.virtio_iso

PASSWORD = "Build-Pa55word!"


def test_build_on_unbootable_media_stops_early_with_screens_and_vnc(
        windows_iso: Path, virtio_iso: Path, tmp_path: Path) -> None:
    """The stand-in ISO boots nothing, as when the "press any key" prompt is missed: OVMF
    ends at its shell and the disk is never written. The build must say so after the stall
    time (not the install budget), name the last screenshot, have saved screens meanwhile, and
    offer the screen on a 127.0.0.1 VNC port while it runs; and leave nothing behind."""
    out = tmp_path / "golden.qcow2"
    spec = ImageBuildSpec(
        windows_iso=windows_iso, virtio_iso=virtio_iso,
        image=ImageSelector(name="Windows Server 2022 SERVERDATACENTER"), output=out,
        password=PASSWORD, firmware=Firmware.UEFI, memory_mib=512, force_tcg=True,
        screenshot_every=1, vnc=True,
        timeouts=StageTimeouts(stall=6, install=3600, provision=5, verify=5, shutdown=5,
                               winrm_read=3))
    seen: list[object] = []
    banner: list[bytes] = []

    def start(*args: object) -> windows_image.Installer:
        seen.extend(args)
        installer = windows_image.start_installer(*args)  # type: ignore[arg-type]
        seen.append(installer)
        live = ET.fromstring(installer.machine.dom.XMLDesc(0))
        graphics = live.findall("./devices/graphics")
        assert [g.get("type") for g in graphics] == ["vnc"]
        addresses = {graphics[0].get("listen")} | {
            el.get("address") for el in graphics[0].iter("listen")}
        assert addresses == {"127.0.0.1"}
        port = installer.vnc_port()
        assert port is not None
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            banner.append(conn.recv(12))
        return installer

    log = io.StringIO()
    with pytest.raises(GuestNotReady) as err:
        windows_image.build_image(spec, Progress(stream=log), start=start)
    msg = err.value.message
    assert "image build stopped at stage 'boot installer'" in msg
    assert "wrote nothing to the disk in 6s" in msg and "--vnc" in msg
    assert str(spec.logs / "serial.log") in msg and (spec.logs / "serial.log").exists()
    screens = sorted((spec.logs / "screens").iterdir())
    assert len(screens) >= 2, "a periodic screenshot and the one at the failure"
    assert f"last screenshot {screens[-1]}" in msg
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in screens)
    assert banner == [b"RFB 003.008\n"]
    assert re.search(r"VNC on 127\.0\.0\.1:(\d+).*'vncviewer 127\.0\.0\.1::\1'", log.getvalue())
    assert PASSWORD not in msg and PASSWORD not in log.getvalue()
    for stage in ("read install.wim", "provisioning ISO", "disk", "boot installer"):
        assert f"{stage}:" in log.getvalue()
    installer = seen[-1]
    assert isinstance(installer, windows_image.Installer) and not installer.is_running()
    assert seen[1] is Accelerator.TCG
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["golden.qcow2.build"], \
        "no partial disk, no work dir, no provisioning ISO left"

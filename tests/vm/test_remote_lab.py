"""What hotadd says about a remote libvirt host without booting anything there: `hotadd run
--print-xml` prints that host's domain XML, `hotadd doctor --host` checks that host, and
`hotadd sweep --all` visits the remote hosts this machine's runs used. The host is
`tests/support/lab_host` (sshd + a system libvirtd in a mount namespace that cannot see this
machine's hotadd cache); hotadd runs through the real CLI in its own process."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.guests import reference
from harness.host import staging, storage
from tests.support.domain_xml import validate
from tests.support.lab_host import LabHost, reference_lab_host
from tests.support.processes import run_hotadd

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def lab() -> Iterator[LabHost]:
    with reference_lab_host() as host:
        yield host


def _host_dir(lab: LabHost, name: str) -> list[str]:
    path = lab.inside(lab.cache / name)
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else []


def test_print_xml_names_the_remote_hosts_files_and_sends_nothing(lab: LabHost,
                                                                  tmp_path: Path) -> None:
    proc = run_hotadd("run", "--libvirt-uri", lab.uri, "--run-dir", str(tmp_path / "run"),
                      "--print-xml", env=lab.env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    root = validate(proc.stdout, tmp_path)
    kernel, initrd = reference.planned_boot_files()
    files = lab.cache / staging.FILES
    assert root.findtext("os/kernel") == str(files / hashlib.sha256(kernel.read_bytes())
                                             .hexdigest())
    assert root.findtext("os/initrd") == str(files / hashlib.sha256(initrd.read_bytes())
                                             .hexdigest())
    serial = root.find("devices/serial")  # read through libvirt's console stream: no file
    assert serial is not None and serial.get("type") == "pty" and serial.find("source") is None
    assert _host_dir(lab, staging.FILES) == [] and _host_dir(lab, "scratch") == []
    assert not (tmp_path / "run").exists()


def test_print_xml_of_a_uefi_windows_guest_uses_the_hosts_firmware_and_scratch(
        lab: LabHost, tmp_path: Path) -> None:
    proc = run_hotadd("run", "--guest", "windows", "--firmware", "uefi", "--accel", "tcg",
                      "--image", str(tmp_path / "missing.qcow2"), "--driver",
                      str(tmp_path / "none.sys"), "--libvirt-uri", lab.uri, "--print-xml",
                      env=lab.env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    root = validate(proc.stdout, tmp_path)
    nvram = root.findtext("os/nvram") or ""
    assert nvram.startswith(str(lab.cache / "scratch")) and nvram.endswith("OVMF_VARS.fd")
    assert _host_dir(lab, "scratch") == []


def _doctor(lab: LabHost, uri: str, env: dict[str, str] | None = None
            ) -> tuple[int, dict[str, dict[str, object]]]:
    proc = run_hotadd("doctor", "--json", "--host", uri, env=env or lab.env)
    assert proc.returncode in (0, 2), proc.stdout + proc.stderr
    return proc.returncode, {c["name"]: c for c in json.loads(proc.stdout)}


def test_doctor_checks_the_remote_host(lab: LabHost) -> None:
    _code, checks = _doctor(lab, lab.uri)
    for name in ("libvirt URI", "SSH login", "libvirt", "emulator", "accelerator",
                 "hot-pluggable CPUs", "qemu-img (Windows overlays)",
                 "flock (capacity leases)", "GNU dd (saved guests)", "staging cache",
                 "host disk space"):
        assert checks[name]["ok"], checks[name]
    assert "root@127.0.0.1" in str(checks["SSH login"]["detail"])
    assert str(lab.cache) in str(checks["staging cache"]["detail"])
    assert str(lab.cache) in str(checks["host disk space"]["detail"])
    # QEMU on the host answered QMP fed through the SSH channel's stdin
    assert "x86_64-cpu" in str(checks["hot-pluggable CPUs"]["detail"])


def test_doctor_names_what_is_wrong_with_a_remote_host(lab: LabHost, tmp_path: Path) -> None:
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
                   check=True)
    code, checks = _doctor(lab, lab.uri.replace(str(lab.key), str(other)))
    assert code == 2 and not checks["SSH login"]["ok"]
    assert "without a password" in str(checks["SSH login"]["fix"])
    assert "libvirt" not in checks  # nothing after a failed login
    code, checks = _doctor(lab, lab.uri, env={"HOTADD_REMOTE_CACHE_DIR": "/proc/hotadd"})
    assert code == 2 and checks["SSH login"]["ok"] and not checks["staging cache"]["ok"]
    assert "HOTADD_REMOTE_CACHE_DIR" in str(checks["staging cache"]["fix"])
    code, checks = _doctor(lab, "qemu+tcp://127.0.0.1/system")
    assert code == 2 and "qemu+ssh" in str(checks["libvirt URI"]["fix"])


def test_sweep_all_clears_a_remote_host_a_run_used(lab: LabHost) -> None:
    """The URI is recorded when hotadd opens it (here by --print-xml, as by a run); `hotadd
    sweep --all` from this machine then clears what a dead process of this machine left
    there."""
    short = Path(tempfile.mkdtemp(dir="/tmp", prefix="hotadd-"))  # an embedded root: short
    try:
        cache = short / "c"
        cache.mkdir()
        env = {**lab.env, "HOTADD_CACHE_DIR": str(cache)}
        printed = run_hotadd("run", "--libvirt-uri", lab.uri, "--print-xml", env=env)
        assert printed.returncode == 0, printed.stdout + printed.stderr
        assert lab.uri in (cache / "libvirt-uris").read_text().splitlines()
        gone = subprocess.Popen(["true"])
        gone.wait()
        left = lab.inside(lab.cache / "scratch" / "hotadd-reference-deadbeef")
        left.mkdir(parents=True)
        (left / storage.OWNER_FILE).write_text(f"{gone.pid} {socket.gethostname()}")
        swept = run_hotadd("sweep", "--all", "--libvirt-uri",
                           f"qemu:///embed?root={short / 'r'}", env=env)
        assert swept.returncode == 0, swept.stdout + swept.stderr
        assert "hotadd-reference-deadbeef" in swept.stdout
        assert not left.exists()
    finally:
        shutil.rmtree(short, ignore_errors=True)

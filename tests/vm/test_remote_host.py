"""A run on a second libvirt host reached only over SSH (`qemu+ssh://`): the default scenario
passes there with the guest's files staged into the host's own cache and the guest's SSH
tunnelled over the host's SSH, and the next run restores the guest saved in the host's own
store; a run killed mid-way leaves a domain and a scratch dir there (and a dead controller a
saved guest half made) that `hotadd sweep --host URI` clears. The host is
`tests/support/lab_host`: sshd + libvirtd in a mount namespace that cannot see this machine's
hotadd cache. hotadd runs through the real CLI in its own process (this test process holds an
embedded libvirt driver)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.guests import reference, windows_setup
from harness.host import staging
from harness.host.connection import open_connection
from harness.host.machine import Machine
from harness.host.saved import SavedStore
from harness.host.target import SshAddress, SshHost
from tests.support import windows_golden
from tests.support.lab_host import LabHost, reference_lab_host
from tests.support.processes import run_hotadd

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def lab() -> Iterator[LabHost]:
    with reference_lab_host() as host:
        yield host


def _domains(lab: LabHost) -> list[str]:
    out = subprocess.run(["virsh", "-c", lab.uri, "list", "--all", "--name"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return [n for n in out.split() if n.startswith("hotadd-")]


def _host_dir(lab: LabHost, name: str) -> list[str]:
    path = lab.inside(lab.cache / name)
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else []


def test_default_scenario_passes_on_a_host_reached_over_ssh_and_restores_there_next_time(
        lab: LabHost, tmp_path: Path) -> None:
    """The first run boots the guest on the host and saves it into the host's own store; the
    second restores it there, under a domain name of its own."""
    local_saved = tmp_path / "local-saved"  # this machine's store: it must stay empty
    env = {**lab.env, "HOTADD_SAVED_DIR": str(local_saved)}
    run = tmp_path / "run"
    proc = run_hotadd("run", "--libvirt-uri", lab.uri, "--run-dir", str(run), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((run / "result.json").read_text())
    assert result["outcome"] == "pass"
    key = result["start"]["key"]
    assert result["start"] == {"warm": True, "key": key, "saved": True, "note": ""}
    # the kernel and initramfs were staged into the host's cache, by content
    kernel, initrd = reference.planned_boot_files()
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (kernel, initrd)}
    assert set(_host_dir(lab, staging.FILES)) == digests  # and nothing else: no key
    xml = (run / "domain.xml").read_text()
    assert str(kernel) not in xml and str(lab.cache / staging.FILES) in xml
    # the saved guest is in the host's store, not this machine's
    assert _host_dir(lab, "saved") == [key, f"{key}.lock"]
    assert {"state.save", "serial.log", "entry.json"} <= set(_host_dir(lab, f"saved/{key}"))
    assert SavedStore(local_saved).entries() == []
    # the console came here through libvirt's console stream (a pty there, no file), from the
    # kernel's first line on; nothing of the run stays there
    serial = (run / "serial.log").read_text()
    assert reference.READY_MARKER in serial
    assert re.match(r"\[\s*0\.000000\] Linux version ", serial.lstrip()), serial[:300]
    port_el = ET.fromstring(xml).find("devices/serial")
    assert port_el is not None and port_el.get("type") == "pty"
    # the guest's SSH went through the host's SSH (a direct-tcpip channel to its forward, on
    # the port the host's QEMU bound: port 0 asks it to pick)
    assert "hostfwd=tcp:127.0.0.1:0-:22" in xml
    channels = re.findall(r"target 127\.0\.0\.1 port (\d+)", (lab.home / "lab.log").read_text())
    assert channels and all(int(p) > 0 for p in channels)
    assert _host_dir(lab, "scratch") == []
    assert _domains(lab) == []
    # a second run sends nothing (the host has the files) and restores the saved guest there
    again_dir = tmp_path / "again"
    again = run_hotadd("run", "--libvirt-uri", lab.uri, "--run-dir", str(again_dir), env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    second = json.loads((again_dir / "result.json").read_text())
    assert second["outcome"] == "pass"
    assert second["start"] == {"warm": True, "key": key, "saved": False, "note": ""}
    assert "restore" in second["timings_s"] and "boot" not in second["timings_s"]
    assert second["domain"] != result["domain"]
    # the boot console (with the ready marker) was fetched from the entry into this run's log
    assert reference.READY_MARKER in (again_dir / "serial.log").read_text()
    assert _host_dir(lab, "scratch") == [] and _domains(lab) == []
    assert SavedStore(local_saved).entries() == []


def test_sweep_host_clears_what_a_killed_run_left_there(lab: LabHost, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", "--quiet", "--libvirt-uri", lab.uri,
         "--run-dir", str(tmp_path / "run"), "--ready-timeout", "600"],
        env=os.environ | lab.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not _domains(lab):  # polled: the domain appears once QEMU started
            assert proc.poll() is None, "the run ended before its domain appeared"
            assert time.monotonic() < deadline, "no domain appeared on the lab host"
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    left = _domains(lab)
    assert len(left) == 1 and _host_dir(lab, "scratch") == left
    gone = subprocess.Popen(["true"])  # a stager of this machine that died mid-transfer
    gone.wait()
    # a saved guest a dead controller was creating: nobody holds its key's lock
    leftover = lab.inside(lab.cache / "saved" / f".tmp-{'ab' * 12}-{gone.pid}-abcdef")
    leftover.mkdir(parents=True)
    (leftover / "state.save").write_bytes(b"half an image")
    lab.inside(lab.cache / staging.FILES).mkdir(exist_ok=True)
    part = lab.inside(lab.cache / staging.FILES /
                      f".{'0' * 64}.{socket.gethostname()}.{gone.pid}.abcdef{staging.PART}")
    part.write_bytes(b"half a file")
    swept = run_hotadd("sweep", "--host", lab.uri, env=lab.env)
    assert swept.returncode == 0, swept.stdout + swept.stderr
    assert left[0] in swept.stdout
    assert _domains(lab) == [] and _host_dir(lab, "scratch") == []
    assert not part.exists()
    assert not leftover.exists() and leftover.name in swept.stdout


def test_a_windows_domain_starts_on_the_remote_host_and_takes_a_hotadd(
        lab: LabHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Windows guest kind's domain (a blank stand-in golden disk: no OS boots) on the lab
    host: its disk an overlay there on the staged golden image, UEFI with the NVRAM copied
    there, a vCPU hot-add through libvirt's ssh transport."""
    monkeypatch.setenv(windows_setup.PASSWORD_ENV, "Run-Pa55word!")
    kind = windows_golden.prepared_kind(tmp_path)
    assert kind.image is not None
    image = kind.image
    host = SshHost(SshAddress.of(lab.uri), cache=lab.cache)
    conn = open_connection(lab.uri)
    try:
        hw = windows_golden.remote_hardware(tmp_path, host)
        with Machine.start(conn, kind.domain_spec(hw), hw.scratch, host) as machine:
            root = ET.fromstring(machine.dom.XMLDesc(0))
            backing = root.find("devices/disk[@device='disk']/backingStore/source")
            digest = hashlib.sha256(image.read_bytes()).hexdigest()
            assert backing is not None
            assert backing.get("file") == str(lab.cache / staging.FILES / digest)
            assert machine.qemu_pid() is None  # its QEMU is the host's, not this machine's
            assert not machine.console.ended, "the console stream reads the host's QEMU"
            assert machine.spec.serial_log.is_relative_to(tmp_path)  # here, not on the host
            assert machine.qemu_view().present == 2
            assert machine.hotadd().libvirt_id == 2 and machine.qemu_view().present == 3
        assert not lab.inside(hw.scratch).exists()
        assert _domains(lab) == []
    finally:
        conn.close()
        host.close()


def test_a_matrix_case_runs_on_the_remote_host(lab: LabHost, tmp_path: Path) -> None:
    """`hotadd matrix` with a host table naming the lab host's URI: the case runs there (one
    worker), its JUnit properties name that host, and nothing of it stays there."""
    matrix = tmp_path / "lab.toml"
    matrix.write_text(f'[hosts.lab]\nuri = "{lab.uri}"\nvcpus = 4\nmemory = 1024\n'
                      '[groups.g]\n[[groups.g.scenario]]\nname = "add"\nadds = 1\n')
    junit, art = tmp_path / "lab.xml", tmp_path / "art"
    proc = run_hotadd("matrix", str(matrix), "--workers", "1", "--junitxml", str(junit),
                      "--artifacts", str(art), env=lab.env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    (case,) = ET.parse(junit).iter("testcase")
    props = {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
    assert case.get("name") == "g/add@lab/reference"
    assert props["hotadd.verdict"] == "pass" and props["hotadd.host.uri"] == lab.uri
    assert _host_dir(lab, "scratch") == [] and _domains(lab) == []

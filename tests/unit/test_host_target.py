"""The host seam over real SSH: staging into the content-addressed cache, qemu-img on the host,
scratch dirs, the dialer, and the remote refusals. The host is `tests/support/lab_host`'s sshd
(no libvirtd, nothing boots): its cache is a tmpfs only it can see."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.errors import InfrastructureError, InputError
from harness.guests import windows_image, windows_setup
from harness.host import staging, storage
from harness.host.domain import DirectBoot, DomainSpec, GuestOS, Topology, VcpuPlan
from harness.host.remote import HostCaps, check_run, place
from harness.host.target import LOCAL, SshAddress, SshHost, is_remote_uri, target_for
from harness.transport.winrm import WinRMEndpoint, WinRMTransport
from tests.support import windows_golden
from tests.support.lab_host import LabHost, lab_host
from tests.support.winrm_double import WinRMDouble


@pytest.fixture(scope="module")
def here(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of this machine that the lab host does not see."""
    return tmp_path_factory.mktemp("here")


@pytest.fixture(scope="module")
def lab(here: Path) -> Iterator[LabHost]:
    with lab_host(hide=[here], libvirtd=False) as host:
        yield host


@pytest.fixture
def host(lab: LabHost) -> Iterator[SshHost]:
    target = SshHost(SshAddress.of(lab.uri), cache=lab.cache)
    yield target
    target.close()


def _file(tmp_path: Path, name: str, size: int) -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def test_staging_sends_a_missing_file_once_by_content(lab: LabHost, host: SshHost,
                                                      tmp_path: Path) -> None:
    local = _file(tmp_path, "vmlinuz", 300_000)
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    first = staging.stage(host, local)
    assert first.sent and first.remote == lab.cache / "files" / digest
    seen = lab.inside(first.remote)
    assert hashlib.sha256(seen.read_bytes()).hexdigest() == digest
    assert not first.remote.exists()  # only the host sees its cache
    again = staging.stage(host, tmp_path / "vmlinuz")
    assert (again.remote, again.sent) == (first.remote, False)
    copy = tmp_path / "same-content"
    copy.write_bytes(local.read_bytes())
    assert staging.stage(host, copy).sent is False  # by content, not by name


def test_two_stagers_racing_leave_one_whole_copy(lab: LabHost, tmp_path: Path) -> None:
    local = _file(tmp_path, "golden.qcow2", 4_000_000)
    hosts = [SshHost(SshAddress.of(lab.uri), cache=lab.cache) for _ in range(2)]
    results: list[staging.Staged] = []
    barrier = threading.Barrier(2)

    def stage(h: SshHost) -> None:
        barrier.wait()
        results.append(staging.stage(h, local))

    threads = [threading.Thread(target=stage, args=(h,)) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for h in hosts:
        h.close()
    assert len(results) == 2 and results[0].remote == results[1].remote
    files = _host_files(lab)
    assert results[0].digest in files
    assert not [n for n in files if n.endswith(staging.PART)]  # no temporary left
    assert lab.inside(results[0].remote).read_bytes() == local.read_bytes()


class _Truncating(SshHost):
    """A real SSH host whose upload loses the file's second half on the way (a fault)."""

    def put(self, local: Path, remote: Path) -> None:
        half = local.with_name(local.name + ".half")
        half.write_bytes(local.read_bytes()[: local.stat().st_size // 2])
        super().put(half, remote)


def test_a_copy_that_arrives_damaged_is_refused_and_removed(lab: LabHost,
                                                            tmp_path: Path) -> None:
    local = _file(tmp_path, "initrd.img", 200_000)
    host = _Truncating(SshAddress.of(lab.uri), cache=lab.cache)
    try:
        with pytest.raises(InfrastructureError, match="arrived with sha256"):
            staging.stage(host, local)
    finally:
        host.close()
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    assert not [n for n in _host_files(lab) if digest in n]  # neither the copy nor a part


def _host_files(lab: LabHost) -> list[str]:
    return sorted(p.name for p in lab.inside(lab.cache / "files").iterdir())


def test_the_cache_is_trimmed_least_recently_used_first(lab: LabHost, host: SshHost,
                                                        tmp_path: Path) -> None:
    for p in lab.inside(lab.cache / "files").glob("*"):
        p.unlink()
    old, mid, new = (staging.stage(host, _file(tmp_path, n, 100_000)) for n in "abc")
    for i, s in enumerate((old, mid, new)):
        os.utime(lab.inside(s.remote), (1_000_000 + i, 1_000_000 + i))
    staging.stage(host, old.local)  # used again: now the most recent
    removed = staging.trim(host, keep={mid.remote}, limit=200_000)
    assert removed == [new.remote]  # mid is older but kept; then old was touched
    left = {p.name for p in lab.inside(lab.cache / "files").iterdir()}
    assert left == {old.digest, mid.digest}


def test_overlay_and_scratch_live_on_the_host(lab: LabHost, host: SshHost, here: Path) -> None:
    base = here / "base.qcow2"
    assert LOCAL.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"]).rc == 0
    staged = staging.stage(host, base)
    scratch = storage.run_scratch("hotadd-ref-test0001", host)
    assert scratch == lab.cache / "scratch" / "hotadd-ref-test0001"
    owner = lab.inside(scratch / storage.OWNER_FILE).read_text()
    assert owner == f"{os.getpid()} {socket.gethostname()}"
    disk = storage.overlay(staged.remote, scratch, host=host)
    info = host.run(["qemu-img", "info", str(disk)])
    assert info.rc == 0 and str(staged.remote) in info.stdout
    with pytest.raises(InputError, match="does not exist on host"):
        storage.overlay(base, scratch, host=host)  # the local file: the host cannot see it
    storage.remove_scratch(scratch, host)
    assert not lab.inside(scratch).exists()
    with pytest.raises(InfrastructureError, match="refusing to remove"):
        host.remove(Path("/var/tmp"))


def test_a_cache_qemu_could_not_reach_is_refused_before_staging(lab: LabHost,
                                                                 tmp_path: Path) -> None:
    private = lab.inside(lab.cache / "private")
    private.mkdir(mode=0o700)
    host = SshHost(SshAddress.of(lab.uri), cache=lab.cache / "private" / "cache")
    try:
        scratch = storage.run_scratch("hotadd-ref-test0002", host)
        spec = DomainSpec(name="hotadd-ref-test0002",
                          vcpus=VcpuPlan(Topology(sockets=1, dies=1, cores=2), 1),
                          guest_os=GuestOS.REFERENCE, serial_log=tmp_path / "serial.log",
                          direct_boot=DirectBoot(tmp_path / "k", tmp_path / "i", ""),
                          remote=True)
        with pytest.raises(InputError, match=r"private on host .* is not searchable"):
            place(host, spec, scratch, HostCaps("/usr/bin/qemu-system-x86_64", False, ()))
        assert not lab.inside(lab.cache / "private" / "cache" / "files").exists()
    finally:
        host.close()


def test_the_dialer_reaches_the_hosts_loopback_over_ssh(lab: LabHost, host: SshHost) -> None:
    with lab.in_network():
        server = socket.socket()  # a socket lives in the network it was made in
    with server:
        server.bind(("127.0.0.1", 0))  # the host's loopback, not this machine's
        server.listen(1)
        with socket.socket() as here:  # the same port here is nobody's
            assert here.connect_ex(("127.0.0.1", server.getsockname()[1])) != 0
        port = server.getsockname()[1]
        chan = host.dialer()(port, 10.0)
        conn, _ = server.accept()
        with conn:
            chan.sendall(b"ping")
            assert conn.recv(4) == b"ping"
        chan.close()
    with pytest.raises(ConnectionRefusedError):
        host.dialer()(port, 10.0)  # nobody listens any more


def test_a_host_key_other_than_the_known_one_is_refused(lab: LabHost, tmp_path: Path) -> None:
    wrong = tmp_path / "known_hosts"
    other = (lab.home / "client_key.pub").read_text().split()[:2]  # a key, not the host's
    wrong.write_text(f"[127.0.0.1]:{lab.port} {' '.join(other)}\n")
    uri = lab.uri.replace(str(lab.known_hosts), str(wrong))
    with pytest.raises(InfrastructureError, match="host key"):
        SshHost(SshAddress.of(uri), cache=lab.cache).run(["true"])


def test_remote_uris_a_run_cannot_use_are_refused_up_front() -> None:
    assert not is_remote_uri("qemu:///system") and not is_remote_uri("qemu+unix:///system")
    assert target_for("qemu:///embed?root=/tmp/x") is LOCAL
    with pytest.raises(InputError, match="needs libvirt's ssh transport"):
        target_for("qemu+tcp://kvm7/system")
    check_run("qemu+ssh://root@kvm7/system")
    address = SshAddress.of("qemu+ssh://lab@kvm7:2222/system?keyfile=/k&no_verify=1")
    assert (address.user, address.port, address.keyfile, address.no_verify) == (
        "lab", 2222, Path("/k"), True)


def test_winrm_reaches_the_hosts_loopback_through_a_local_forward(lab: LabHost, host: SshHost,
                                                                  tmp_path: Path) -> None:
    """pywinrm takes a URL, not a socket: `local_port` listens here and tunnels each
    connection over the host's SSH to its 127.0.0.1, where the WS-Management double listens
    (in the lab host's network namespace: this machine cannot reach it directly)."""
    with lab.in_network():  # its port is free, and bound, on the host's 127.0.0.1
        double = WinRMDouble(tmp_path / "guest", password="Tunnel-Pa55!").__enter__()
    with double:
        port = host.local_port(double.port)
        assert port != double.port and host.local_port(double.port) == port  # one per port
        endpoint = WinRMEndpoint(port=port, username="Administrator", password="Tunnel-Pa55!")
        with WinRMTransport(endpoint) as winrm:
            assert winrm.run("echo hello").check().stdout.strip() == "hello"
    assert f"target 127.0.0.1 port {double.port}" in (lab.home / "lab.log").read_text()
    host.close()  # the forward's listener closes with the connection
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_a_windows_domain_for_a_remote_host_is_made_there(lab: LabHost, host: SshHost,
                                                         here: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The golden image and its NVRAM are staged by content, the overlay, the run's NVRAM
    and the driver CD are made in the run's scratch dir on the host; none of them here."""
    monkeypatch.setenv(windows_setup.PASSWORD_ENV, "Run-Pa55word!")
    kind = windows_golden.prepared_kind(here)
    assert kind.image is not None
    image = kind.image
    hw = windows_golden.remote_hardware(here, host)
    spec = kind.domain_spec(hw)
    try:
        assert spec.remote and spec.nvram == hw.scratch / "OVMF_VARS.fd"
        assert {d.path for d in spec.disks} | {c.path for c in spec.cdroms} == {
            hw.scratch / "disk0.qcow2", hw.scratch / "driver.iso"}
        golden_digest = hashlib.sha256(image.read_bytes()).hexdigest()
        info = host.run(["qemu-img", "info", str(hw.scratch / "disk0.qcow2")]).stdout
        assert str(lab.cache / "files" / golden_digest) in info  # backed by the staged copy
        nvram = windows_image.nvram_path(image).read_bytes()
        assert lab.inside(hw.scratch / "OVMF_VARS.fd").read_bytes() == nvram
        assert lab.inside(hw.scratch / "driver.iso").stat().st_size > 0
        assert b"Run-Pa55word!" not in b"".join(
            p.read_bytes() for p in lab.inside(lab.cache).rglob("*") if p.is_file())
    finally:
        storage.remove_scratch(hw.scratch, host)

"""A remote host's capacity gate is on that host: two controllers (two processes with caches of
their own, as on two machines) driving one `qemu+ssh://` host count each other's leases, so
they never oversubscribe it; a controller killed while holding leaks nothing. The host is
`tests/support/lab_host`'s sshd (no libvirtd, nothing boots). Synchronised by the processes'
own output lines, not by time."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.errors import InfrastructureError
from harness.host.capacity import Capacity
from harness.host.target import SshAddress, SshHost
from harness.matrix import MatrixHost
from tests.support.capacity_holder import HolderProcess
from tests.support.lab_host import LabHost, lab_host


@pytest.fixture(scope="module")
def lab() -> Iterator[LabHost]:
    with lab_host(libvirtd=False) as host:
        yield host


@pytest.fixture
def controllers(lab: LabHost, tmp_path: Path) -> Iterator[list[HolderProcess]]:
    started: list[HolderProcess] = []
    yield started
    for h in started:
        h.close()
    gate = lab.inside(lab.cache / "capacity" / "holders")
    for f in gate.glob("*.json"):  # the next test starts from an empty gate
        f.unlink()


def _controller(lab: LabHost, tmp_path: Path, label: str, need: int,
                started: list[HolderProcess]) -> HolderProcess:
    """A lease on the lab host from a controller with a cache of its own."""
    cache = tmp_path / f"cache-{label}"
    cache.mkdir()
    proc = HolderProcess(need, 512, label, total=(2, 1024), key=lab.uri,
                         env={**lab.env, "HOTADD_CACHE_DIR": str(cache)})
    started.append(proc)
    return proc


def _holder_files(lab: LabHost) -> list[Path]:
    return sorted(lab.inside(lab.cache / "capacity" / "holders").glob("*.json"))


def test_two_controllers_share_the_remote_hosts_capacity(
        lab: LabHost, tmp_path: Path, controllers: list[HolderProcess]) -> None:
    a = _controller(lab, tmp_path, "a", 2, controllers)
    assert a.line() == "held"
    assert len(_holder_files(lab)) == 1  # on the host, not in a's cache
    b = _controller(lab, tmp_path, "b", 1, controllers)  # 2 + 1 vCPUs > 2
    assert b.line() == "waiting a"
    assert a.release() == "released"
    assert b.line() == "held"  # only now: its first line said it was waiting behind a
    assert b.release() == "released"
    assert _holder_files(lab) == []


def test_a_killed_controller_leaks_no_capacity_on_the_remote_host(
        lab: LabHost, tmp_path: Path, controllers: list[HolderProcess]) -> None:
    a = _controller(lab, tmp_path, "a", 2, controllers)
    assert a.line() == "held"
    b = _controller(lab, tmp_path, "b", 2, controllers)
    assert b.line() == "waiting a"
    a.proc.send_signal(signal.SIGKILL)  # its SSH session ends: the host drops its lock
    a.proc.wait()
    assert b.line() == "held"
    assert len(_holder_files(lab)) == 1  # b's own: a's stale file was removed when counted
    assert b.release() == "released"


def test_a_holder_file_is_created_exclusively(lab: LabHost) -> None:
    host = SshHost(SshAddress.of(lab.uri), cache=lab.cache)
    try:
        path = lab.cache / "exclusive.json"
        host.create_text(path, "first")
        with pytest.raises(InfrastructureError, match="cannot create"):
            host.create_text(path, "second")
        assert lab.inside(path).read_text() == "first"
        host.remove(path)
    finally:
        host.close()


def test_a_matrix_gates_a_remote_host_on_that_host() -> None:
    """A remote host's cases take leases of its own gate (there), not of this machine's."""
    uri = "qemu+ssh://root@kvm7/system"
    assert MatrixHost("lab", uri, Capacity(2, 1024)).gate_key == uri
    assert MatrixHost("here", "qemu:///embed", Capacity(2, 1024)).gate_key == "local"

"""A remote host's saved-guest store is on that host, and its locks are held there by the
controllers' SSH connections: an entry made by one controller is restored by another, a
second controller wanting a key being created waits for it, an entry in use is never
evicted, and a killed creator's staging dir is swept (its lock died with its connection). The
per-run rename of a save image happens on the host. The host is `tests/support/lab_host`'s sshd
(no libvirtd, nothing boots); controllers are separate processes, synchronised by their output
lines, not by time."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.host.saved import SavedStore
from harness.host.saveimage import read_header, write_renamed
from harness.host.target import SshAddress, SshHost
from tests.support.lab_host import LabHost, lab_host
from tests.support.save_images import STREAM, image_bytes
from tests.support.saved_claimer import ClaimerProcess


@pytest.fixture(scope="module")
def lab() -> Iterator[LabHost]:
    with lab_host(libvirtd=False) as host:
        yield host


@pytest.fixture
def host(lab: LabHost) -> Iterator[SshHost]:
    target = SshHost(SshAddress.of(lab.uri), cache=lab.cache)
    yield target
    target.remove(lab.cache / "saved")  # the next test starts from an empty store
    target.close()


@pytest.fixture
def controllers() -> Iterator[list[ClaimerProcess]]:
    started: list[ClaimerProcess] = []
    yield started
    for c in started:
        c.close()


def _controller(lab: LabHost, key: str, started: list[ClaimerProcess]) -> ClaimerProcess:
    proc = ClaimerProcess(lab.uri, lab.cache, key)
    started.append(proc)
    return proc


def _store_names(lab: LabHost) -> set[str]:
    return {p.name for p in lab.inside(lab.cache / "saved").iterdir()}


def test_an_entry_one_controller_made_on_the_host_is_restored_by_another(
        lab: LabHost, host: SshHost, controllers: list[ClaimerProcess]) -> None:
    a = _controller(lab, "k1", controllers)
    assert a.line().startswith("creating .tmp-k1-")
    assert a.go() == "published"
    entry = lab.inside(lab.cache / "saved" / "k1")  # on the host
    assert {p.name for p in entry.iterdir()} == {"state.save", "serial.log", "entry.json",
                                                "used"}
    assert _store_names(lab) == {"k1", "k1.lock"}  # the staging dir was renamed in
    b = _controller(lab, "k1", controllers)
    assert b.line() == f"restored made by {a.proc.pid}"
    assert b.go() == "released"
    store = SavedStore(target=host, limit=1 << 30)
    assert [e.key for e in store.entries()] == ["k1"]


def test_a_controller_finding_another_creating_its_key_waits_and_restores(
        lab: LabHost, host: SshHost, controllers: list[ClaimerProcess]) -> None:
    a = _controller(lab, "k2", controllers)
    assert a.line().startswith("creating ")
    b = _controller(lab, "k2", controllers)
    assert b.line() == "waiting"  # a holds the key's lock on the host
    assert a.go() == "published"
    assert b.line() == f"restored made by {a.proc.pid}"  # booted once between them
    assert b.go() == "released"


def test_an_entry_in_use_on_the_host_is_not_evicted(
        lab: LabHost, host: SshHost, controllers: list[ClaimerProcess]) -> None:
    a = _controller(lab, "k3", controllers)
    assert a.line().startswith("creating ")
    assert a.go() == "published"
    reader = _controller(lab, "k3", controllers)
    assert reader.line().startswith("restored ")
    store = SavedStore(target=host, limit=0)
    assert store.evict("k3") is False and store.trim() == []
    assert "k3" in _store_names(lab)
    assert reader.go() == "released"
    assert store.trim() == ["k3"]
    assert _store_names(lab) == set()  # the entry and its lock file


def test_a_killed_creators_staging_dir_is_swept_and_a_live_ones_kept(
        lab: LabHost, host: SshHost, controllers: list[ClaimerProcess]) -> None:
    dead = _controller(lab, "k4", controllers)
    dead_dir = dead.line().removeprefix("creating ")
    live = _controller(lab, "k5", controllers)
    live_dir = live.line().removeprefix("creating ")
    store = SavedStore(target=host, limit=1 << 30)
    assert store.sweep() == []  # both creators hold their keys' locks
    dead.proc.send_signal(signal.SIGKILL)  # its SSH session ends: the host drops its lock
    dead.proc.wait()
    assert store.sweep() == [dead_dir]
    assert _store_names(lab) == {live_dir, "k5.lock"}  # k4's lock file went with its dir
    assert live.go() == "published"


def test_a_save_image_is_renamed_for_a_run_on_the_host(lab: LabHost, host: SshHost,
                                                       tmp_path: Path) -> None:
    saved = lab.cache / "saved" / "state.save"
    host.mkdir(saved.parent)
    (tmp_path / "state.save").write_bytes(image_bytes())
    host.put(tmp_path / "state.save", saved)
    copy = lab.cache / "saved" / "restore.save"
    xml = write_renamed(saved, copy, "hotadd-reference-1234abcd", host)
    header = read_header(copy, host)
    assert header.xml == xml and "<name>hotadd-reference-1234abcd</name>" in xml
    assert header.stream_offset == read_header(saved, host).stream_offset
    copied = lab.inside(copy).read_bytes()  # written there, its stream copied there
    assert copied[header.stream_offset:] == STREAM
    assert lab.inside(saved).read_bytes() == image_bytes()  # the shared image is untouched

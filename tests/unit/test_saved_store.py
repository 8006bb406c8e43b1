"""The saved-guest store and keys: what makes a new key, least-recently-used eviction, and
runs in separate processes wanting one key at once (real processes, real files and flocks;
processes wait on pipes and barriers, never on sleeps)."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from harness.errors import DomainError
from harness.guests.base import GuestKind, HardwareRequest, Session
from harness.host.domain import (
    Accelerator,
    DirectBoot,
    DomainSpec,
    Forward,
    GuestOS,
    Topology,
    VcpuPlan,
)
from harness.host.machine import Machine, adapt_saved_xml
from harness.host.saved import Key, SavedStore, file_digest
from harness.progress import Progress
from harness.warm import key_for, normalised_xml

CTX = multiprocessing.get_context("fork")  # unit tests hold no libvirt threads to fork


class _Kind(GuestKind):
    """Only what key_for reads of a guest kind: its OS and its extra inputs."""

    os = GuestOS.REFERENCE

    def __init__(self, extra: tuple[Path, ...] = ()) -> None:
        self.extra = extra

    def warm_inputs(self) -> tuple[Path, ...]:
        return self.extra

    def prepare(self, progress: Progress) -> None:
        raise NotImplementedError

    def domain_spec(self, hw: HardwareRequest) -> DomainSpec:
        raise NotImplementedError

    def open_session(self, machine: Machine, progress: Progress,
                     timeout: float) -> Session:
        raise NotImplementedError


def _hw(tmp: Path, tag: str, boot: int = 2) -> HardwareRequest:
    scratch = tmp / f"scratch-{tag}"
    run_dir = tmp / f"run-{tag}"
    scratch.mkdir(exist_ok=True)
    run_dir.mkdir(exist_ok=True)
    return HardwareRequest(name=f"hotadd-reference-{tag}", vcpus=VcpuPlan(Topology(), boot),
                           accelerator=Accelerator.TCG, run_dir=run_dir, scratch=scratch)


def _spec(hw: HardwareRequest, kernel: Path, initrd: Path, port: int,
          memory: int = 512) -> DomainSpec:
    return DomainSpec(name=hw.name, vcpus=hw.vcpus, guest_os=GuestOS.REFERENCE,
                      serial_log=hw.run_dir / "serial.log", memory_mib=memory,
                      accelerator=hw.accelerator,
                      direct_boot=DirectBoot(kernel, initrd, "console=ttyS0"),
                      forwards=(Forward(guest_port=22, host_port=port),),
                      metadata={"pid": str(port), "scratch": str(hw.scratch)})


@pytest.fixture
def guest_files(tmp_path: Path) -> tuple[Path, Path]:
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.img"
    kernel.write_bytes(b"kernel v1")
    initrd.write_bytes(b"initrd v1")
    return kernel, initrd


VERSIONS = {"libvirt": "9.0.0", "qemu": "7.2.0"}


def test_runs_of_one_guest_share_a_key_whatever_their_names_ports_and_dirs(
        tmp_path: Path, guest_files: tuple[Path, Path]) -> None:
    kernel, initrd = guest_files
    a, b = _hw(tmp_path, "aaaa1111"), _hw(tmp_path, "bbbb2222")
    spec_a, spec_b = _spec(a, kernel, initrd, 40001), _spec(b, kernel, initrd, 40002)
    assert normalised_xml(spec_a, a) == normalised_xml(spec_b, b)
    memo = tmp_path / "memo"
    memo.mkdir()
    key_a = key_for(_Kind(), spec_a, a, VERSIONS, memo).digest
    assert key_a == key_for(_Kind(), spec_b, b, VERSIONS, memo).digest


@pytest.mark.parametrize("change", ["boot_vcpus", "memory", "kernel", "extra input", "qemu",
                                    "cmdline"])
def test_anything_that_shapes_the_saved_state_makes_a_new_key(
        tmp_path: Path, guest_files: tuple[Path, Path], change: str) -> None:
    kernel, initrd = guest_files
    extra = tmp_path / "driver.sys"
    extra.write_bytes(b"driver v1")
    memo = tmp_path / "memo"
    memo.mkdir()
    hw = _hw(tmp_path, "aaaa1111")
    spec = _spec(hw, kernel, initrd, 40001)
    before = key_for(_Kind((extra,)), spec, hw, VERSIONS, memo).digest
    versions = dict(VERSIONS)
    if change == "boot_vcpus":
        hw = _hw(tmp_path, "aaaa1111", boot=1)
        spec = _spec(hw, kernel, initrd, 40001)
    elif change == "memory":
        spec = _spec(hw, kernel, initrd, 40001, memory=768)
    elif change == "kernel":
        kernel.write_bytes(b"kernel v2, a different length")
    elif change == "extra input":
        extra.write_bytes(b"driver v2, a different length")
    elif change == "qemu":
        versions["qemu"] = "8.0.0"
    elif change == "cmdline":
        assert spec.direct_boot is not None
        spec = dataclasses.replace(spec, direct_boot=dataclasses.replace(
            spec.direct_boot, cmdline="console=ttyS0 quiet"))
    assert key_for(_Kind((extra,)), spec, hw, versions, memo).digest != before


def test_file_digest_follows_content_changes_at_the_same_path(tmp_path: Path) -> None:
    f = tmp_path / "image"
    f.write_bytes(b"one")
    first = file_digest(f, tmp_path)
    assert file_digest(f, tmp_path) == first  # remembered
    f.write_bytes(b"two")
    os.utime(f, ns=(1, 1))  # even with an mtime moved backwards: size/mtime/inode differ
    assert file_digest(f, tmp_path) != first


def test_key_digest_ignores_input_order() -> None:
    assert Key({"a": 1, "b": {"x": 1, "y": 2}}).digest == Key({"b": {"y": 2, "x": 1},
                                                                "a": 1}).digest


def test_saved_xml_takes_the_runs_ports_and_owner_and_keeps_the_pty_console(
        tmp_path: Path, guest_files: tuple[Path, Path]) -> None:
    from harness.host.domain import to_xml

    kernel, initrd = guest_files
    saver, runner = _hw(tmp_path, "aaaa1111"), _hw(tmp_path, "bbbb2222")
    saved = to_xml(_spec(saver, kernel, initrd, 40001))
    run = dataclasses.replace(_spec(runner, kernel, initrd, 40777), name=saver.name)
    xml = adapt_saved_xml(saved, run)
    assert "127.0.0.1:40777-:22" in xml and "40001" not in xml
    assert '<serial type="pty">' in xml  # read through libvirt's console stream
    assert "serial.log" not in xml  # the log is hotadd's local file, not QEMU's
    assert str(saver.scratch) not in xml and str(runner.scratch) in xml  # metadata


def test_a_save_image_with_a_file_serial_is_refused_with_the_fix(
        tmp_path: Path, guest_files: tuple[Path, Path]) -> None:
    """An image an older hotadd saved (QEMU wrote the console to a file) has no console for
    the stream to read: refused, not restored into a run that would see no console."""
    from harness.host.domain import to_xml

    kernel, initrd = guest_files
    hw = _hw(tmp_path, "aaaa1111")
    spec = _spec(hw, kernel, initrd, 40001)
    old = to_xml(spec).replace("<serial type=\"pty\">",
                               f"<serial type=\"file\"><source path=\"{spec.serial_log}\" />")
    with pytest.raises(DomainError, match="no pty serial port") as err:
        adapt_saved_xml(old, spec)
    assert err.value.fix is not None and "--cold" in err.value.fix


# --- the store: publish, LRU, concurrency ----------------------------------------------------

def _publish(store: SavedStore, key: str, size: int, used_at: float | None = None) -> None:
    with store.claim(key) as claim:
        assert claim.creating
        staging = claim.staging()
        staging.image.write_bytes(b"s" * size)
        staging.console.write_text("hotadd-guest: ready\n")
        claim.publish({"name": key})
    if used_at is not None:
        os.utime(store.entry_path(key) / "used", (used_at, used_at))


def test_an_entry_appears_whole_and_is_found_by_the_next_claim(tmp_path: Path) -> None:
    store = SavedStore(tmp_path, limit=10_000)
    _publish(store, "k1", 100)
    with store.claim("k1") as claim:
        assert not claim.creating and claim.entry is not None
        assert claim.entry.image.read_bytes() == b"s" * 100
        assert claim.entry.meta["key"] == "k1"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_a_run_that_fails_before_publishing_leaves_nothing(tmp_path: Path) -> None:
    store = SavedStore(tmp_path, limit=10_000)
    with pytest.raises(RuntimeError), store.claim("k1") as claim:
        claim.staging().image.write_bytes(b"half")
        raise RuntimeError("boot failed")
    assert [p.name for p in tmp_path.iterdir()] == ["k1.lock"]
    with store.claim("k1") as claim:
        assert claim.creating


def test_trim_evicts_least_recently_used_first(tmp_path: Path) -> None:
    store = SavedStore(tmp_path, limit=2500)
    _publish(store, "old", 1000, used_at=1000.0)
    _publish(store, "mid", 1000, used_at=2000.0)
    _publish(store, "new", 1000, used_at=3000.0)
    with store.claim("old"):  # a restore marks it used now: "mid" is the oldest
        pass
    assert store.trim() == ["mid"]
    assert sorted(e.key for e in store.entries()) == ["new", "old"]
    assert not store.lock_path("mid").exists()


def _hold(store_root: str, key: str, ready: Connection, release: Connection) -> None:
    store = SavedStore(Path(store_root), limit=1 << 30)
    with store.claim(key):
        ready.send("holding")
        release.recv()


def _child(target: Callable[..., None], *args: Any) -> multiprocessing.process.BaseProcess:
    proc = CTX.Process(target=target, args=args)
    proc.start()
    return proc


def test_an_entry_in_use_by_another_process_is_not_evicted(tmp_path: Path) -> None:
    store = SavedStore(tmp_path, limit=0)
    _publish(store, "busy", 100)
    ready_r, ready_w = CTX.Pipe(duplex=False)
    release_r, release_w = CTX.Pipe(duplex=False)
    proc = _child(_hold, str(tmp_path), "busy", ready_w, release_r)
    try:
        assert ready_r.recv() == "holding"
        assert store.trim() == []
        assert store.evict("busy") is False
    finally:
        release_w.send("go")
        proc.join(30)
    assert store.trim() == ["busy"]


def _race(store_root: str, key: str, barrier: Any, out: Connection) -> None:
    """One run wanting `key`: create it if it is missing, else read it."""
    store = SavedStore(Path(store_root), limit=1 << 30)
    barrier.wait()
    with store.claim(key) as claim:
        if claim.creating:
            staging = claim.staging()
            staging.image.write_bytes(f"made by {os.getpid()}".encode())
            staging.console.write_text("ready\n")
            claim.publish({})
            out.send(("created", os.getpid()))
        else:
            assert claim.entry is not None
            out.send(("restored", claim.entry.image.read_text()))


def test_runs_wanting_one_key_at_once_boot_it_once(tmp_path: Path) -> None:
    n = 4
    barrier = CTX.Barrier(n)
    pipes = [CTX.Pipe(duplex=False) for _ in range(n)]
    procs = [_child(_race, str(tmp_path), "shared", barrier, w) for _r, w in pipes]
    results = [r.recv() for r, _w in pipes]
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    created = [pid for what, pid in results if what == "created"]
    assert len(created) == 1
    assert {text for what, text in results if what == "restored"} == {f"made by {created[0]}"}


def _exit_now() -> None:
    os._exit(0)


def _stage_and_hold(store_root: str, key: str, ready: Connection, release: Connection) -> None:
    """A run creating `key`: its staging dir exists while it holds the key's lock."""
    store = SavedStore(Path(store_root), limit=1 << 30)
    with store.claim(key) as claim:
        ready.send(claim.staging().path.name)
        release.recv()


def test_sweep_removes_leftovers_of_dead_runs_and_keeps_live_ones(tmp_path: Path) -> None:
    """A staging dir is a live run's while its key's lock is held, whatever pid its name
    carries: the dead run's dir (named with this process's pid) goes, the live one stays."""
    store = SavedStore(tmp_path, limit=10_000)
    _publish(store, "keep", 100)
    ready_r, ready_w = CTX.Pipe(duplex=False)
    release_r, release_w = CTX.Pipe(duplex=False)
    live = _child(_stage_and_hold, str(tmp_path), "k3", ready_w, release_r)
    try:
        live_dir = ready_r.recv()
        dead = f".tmp-k2-{os.getpid()}-abc"  # a pid alive, but nobody holds k2's lock
        (tmp_path / dead).mkdir()
        (tmp_path / "orphan.lock").touch()
        removed = store.sweep()
        assert removed == [dead]
        names = {p.name for p in tmp_path.iterdir()}
        assert {live_dir, "k3.lock", "keep", "keep.lock"} <= names
        assert "orphan.lock" not in names and dead not in names and "k2.lock" not in names
    finally:
        release_w.send("go")
        live.join(30)
    assert live.exitcode == 0


def _create_when_told(store_root: str, key: str, ready: Connection, go: Connection) -> None:
    store = SavedStore(Path(store_root), limit=1 << 30)
    with store.claim(key) as claim:
        assert claim.creating
        ready.send("creating")
        go.recv()
        staging = claim.staging()
        staging.image.write_bytes(b"made while the other waited")
        staging.console.write_text("ready\n")
        claim.publish({})


def test_a_run_finding_another_creating_its_key_says_so_waits_and_restores(
        tmp_path: Path) -> None:
    store = SavedStore(tmp_path, limit=1 << 30)
    ready_r, ready_w = CTX.Pipe(duplex=False)
    go_r, go_w = CTX.Pipe(duplex=False)
    proc = _child(_create_when_told, str(tmp_path), "k", ready_w, go_r)
    waited: list[bool] = []

    def on_wait() -> None:  # called before blocking: only now let the creator finish
        waited.append(True)
        go_w.send("go")

    try:
        assert ready_r.recv() == "creating"
        with store.claim("k", on_wait=on_wait) as claim:
            assert waited == [True] and not claim.creating and claim.entry is not None
            assert claim.entry.image.read_bytes() == b"made while the other waited"
    finally:
        proc.join(30)
    assert proc.exitcode == 0


def test_saved_xml_takes_the_runs_disk_cdrom_and_nvram_paths(tmp_path: Path) -> None:
    """The Windows shape: an overlay disk, a driver CD and NVRAM, all in the run's scratch."""
    from harness.host.domain import Cdrom, Disk, Firmware, to_xml

    def spec(hw: HardwareRequest, port: int) -> DomainSpec:
        for name in ("disk0.qcow2", "driver.iso", "OVMF_VARS.fd"):
            (hw.scratch / name).write_bytes(b"x")
        return DomainSpec(name="hotadd-windows-w1234", vcpus=hw.vcpus, guest_os=GuestOS.WINDOWS,
                          serial_log=hw.run_dir / "serial.log", memory_mib=2048,
                          accelerator=Accelerator.TCG, firmware=Firmware.UEFI,
                          nvram=hw.scratch / "OVMF_VARS.fd",
                          disks=(Disk(hw.scratch / "disk0.qcow2"),),
                          cdroms=(Cdrom(hw.scratch / "driver.iso"),),
                          forwards=(Forward(guest_port=5985, host_port=port),))

    saver, runner = _hw(tmp_path, "aaaa1111"), _hw(tmp_path, "bbbb2222")
    xml = adapt_saved_xml(to_xml(spec(saver, 40001)), spec(runner, 40777))
    assert str(saver.scratch) not in xml
    for name in ("disk0.qcow2", "driver.iso", "OVMF_VARS.fd"):
        assert str(runner.scratch / name) in xml
    assert "127.0.0.1:40777-:5985" in xml


# --- forwards: the host ports QEMU bound ------------------------------------------------------

#: `info usernet` as QEMU 7.2 prints it for `-netdev user,hostfwd=tcp:127.0.0.1:0-:22`, with a
#: connection through the forward.
USERNET = """Hub -1 (hotaddnet0):
  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ
  TCP[HOST_FORWARD]  14       127.0.0.1 37573       10.0.2.15    22     0     0
  TCP[ESTABLISHED]   17       10.0.2.15 22           10.0.2.2 51200     0     0
"""


def test_the_forwards_get_the_ports_qemu_reports() -> None:
    from harness.host.machine import bound_forwards

    assert bound_forwards(USERNET, [Forward(22)]) == (Forward(22, 37573),)


def test_a_forward_qemu_does_not_report_is_an_error_naming_it() -> None:
    from harness.host.machine import bound_forwards

    with pytest.raises(DomainError, match=r"guest port\(s\) \[5985\]"):
        bound_forwards(USERNET, [Forward(5985)])

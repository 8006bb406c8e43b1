"""A host's vCPU and memory capacity, shared by every hotadd process on the machine.

pytest-xdist decides which worker runs which scenario; this only gates: before a scenario
boots, it takes a lease for the vCPUs it will have online and the memory it will use, and
waits while the host's declared capacity would be exceeded. It is a counting semaphore kept in
files under the cache directory, so it also holds between separate runs on one host.

How it stays correct without a daemon:
- `ledger.lock` is held (flock, exclusive) only while the holders are counted and one is added.
- Each lease is a file `holders/<token>.json` that its process keeps flock'ed for as long as it
  holds the lease. A holder file whose lock can be taken belongs to nobody (the process
  released it or died: the kernel drops flocks of a dead process), so it is removed and not
  counted. A crashed worker therefore never leaks capacity, and no pid can be mistaken for
  another.
- A process that does not fit waits, blocking on every live holder's lock at once (no
  polling), until any one lets go; then it counts again.
flock(2) is per open file description and released on the last close or on exit
(https://man7.org/linux/man-pages/man2/flock.2.html).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from harness import paths
from harness.errors import InputError


@dataclass(frozen=True)
class Capacity:
    """What a host may run at once: vCPUs online across its guests, and guest memory."""

    vcpus: int
    memory_mib: int

    def __post_init__(self) -> None:
        if self.vcpus < 1 or self.memory_mib < 64:
            raise InputError(f"host capacity {self.vcpus} vCPUs / {self.memory_mib} MiB is "
                             "too small", "give at least 1 vCPU and 64 MiB")

    def fits(self, other: Capacity) -> bool:
        return other.vcpus <= self.vcpus and other.memory_mib <= self.memory_mib


@dataclass(frozen=True)
class Holder:
    """A lease as another process sees it in the ledger."""

    token: str
    pid: int
    label: str
    need: Capacity


def gate_dir(host_key: str) -> Path:
    """The directory of one host's gate (one per machine for the local host)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", host_key)
    path = paths.cache_dir() / "capacity" / safe / "holders"
    path.mkdir(parents=True, exist_ok=True)
    return path.parent


def _lock(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind)
    except BlockingIOError:
        return False
    return True


def _live_holders(holders: Path) -> list[Holder]:
    """The leases whose process still holds them; stale holder files are removed. Call with
    the ledger lock held."""
    live = []
    for path in sorted(holders.glob("*.json")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            if _lock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB):
                path.unlink(missing_ok=True)  # nobody holds it: released or dead
                continue
            data = json.loads(os.read(fd, 65536))
            live.append(Holder(path.stem, int(data["pid"]), str(data["label"]),
                               Capacity(int(data["vcpus"]), int(data["memory_mib"]))))
        finally:
            os.close(fd)
    return live


@contextlib.contextmanager
def lease(host_key: str, capacity: Capacity, need: Capacity, label: str,
          on_wait: Callable[[list[Holder]], None] | None = None) -> Iterator[Holder]:
    """Hold `need` of the host's `capacity` for the body; wait (blocking, no polling) while
    other holders leave too little. `on_wait` is told whom this process waits behind."""
    if not capacity.fits(need):
        raise InputError(f"{label} needs {need.vcpus} vCPUs and {need.memory_mib} MiB but the "
                         f"host offers {capacity.vcpus} vCPUs and {capacity.memory_mib} MiB",
                         "lower the scenario's vCPUs/memory or raise the host's capacity")
    root = gate_dir(host_key)
    holders = root / "holders"
    ledger = os.open(root / "ledger.lock", os.O_RDWR | os.O_CREAT, 0o600)
    mine: tuple[int, Path, Holder] | None = None
    try:
        while mine is None:
            fcntl.flock(ledger, fcntl.LOCK_EX)
            try:
                live = _live_holders(holders)
                vcpus = sum(h.need.vcpus for h in live) + need.vcpus
                memory = sum(h.need.memory_mib for h in live) + need.memory_mib
                if vcpus <= capacity.vcpus and memory <= capacity.memory_mib:
                    token = secrets.token_hex(8)
                    path = holders / f"{token}.json"
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                    fcntl.flock(fd, fcntl.LOCK_EX)  # before anyone can count it
                    os.write(fd, json.dumps({"pid": os.getpid(), "label": label,
                                             "vcpus": need.vcpus,
                                             "memory_mib": need.memory_mib}).encode())
                    mine = (fd, path, Holder(token, os.getpid(), label, need))
                    break
            finally:
                fcntl.flock(ledger, fcntl.LOCK_UN)
            if on_wait is not None:
                on_wait(live)
            _wait_for_any([holders / f"{h.token}.json" for h in live])
        yield mine[2]
    finally:
        os.close(ledger)
        if mine is not None:
            mine[1].unlink(missing_ok=True)  # unlink first: a waiter then never counts it
            os.close(mine[0])  # releases the flock: a waiter blocked on it wakes up


def _wait_for_any(holder_files: list[Path]) -> None:
    """Block until any of these holders lets go. One daemon thread blocks in flock on each;
    the first to return wakes this one. The others end when their holder lets go (or with the
    process): a lock they then take is on a released, unlinked or dead holder's file, which
    nobody counts."""
    done = threading.Event()

    def wait_one(path: Path) -> None:
        _wait_for(path)
        done.set()

    for path in holder_files:
        threading.Thread(target=wait_one, args=(path,), name=f"capacity-wait-{path.stem}",
                         daemon=True).start()
    done.wait()


def _wait_for(holder_file: Path) -> None:
    """Block until the holder of `holder_file` lets go (released, or its process died)."""
    try:
        fd = os.open(holder_file, os.O_RDONLY)
    except FileNotFoundError:
        return  # already released: count again
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)

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

A remote host (`qemu+ssh://`, the key is its URI) keeps its gate on that host, under its
hotadd directory (`CACHE/capacity/`), so every controller driving it counts the same leases.
The protocol is the same, with the locks taken on the host by flock(1) commands over the SSH
connection (`SshHost.flock`): a holder's lock lives as long as its command, which ends when its
controller releases it or dies (sshd closes the session, the command reads end of file), so a
dead controller's lease is stale at once. Holder files are created with O_EXCL over SFTP.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from harness import paths
from harness.errors import InfrastructureError, InputError
from harness.host.target import HostLock, SshAddress, SshHost, is_remote_uri


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
    if is_remote_uri(host_key):
        with _remote_lease(host_key, capacity, need, label, on_wait) as held:
            yield held
        return
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


# --- a remote host's gate, on that host ------------------------------------------------------

#: Lists the holder files of a gate on the host: a file whose lock can be taken shared without
#: waiting belongs to nobody (released, or its controller died) and is removed; each live one
#: is printed as "NAME<TAB>JSON". Run with the holders directory as $1.
_COUNT_SCRIPT = """cd "$1" || exit 0
for f in *.json; do
  [ -e "$f" ] || continue
  if flock -n -s "$f" true; then rm -f -- "$f"; else printf '%s\\t' "$f"; cat -- "$f"; echo; fi
done"""


@contextlib.contextmanager
def _remote_lease(uri: str, capacity: Capacity, need: Capacity, label: str,
                  on_wait: Callable[[list[Holder]], None] | None) -> Iterator[Holder]:
    host = SshHost(SshAddress.of(uri))
    root = host.cache_root() / "capacity"
    holders = root / "holders"
    mine: tuple[HostLock, Path, Holder] | None = None
    try:
        host.mkdir(holders)
        while mine is None:
            ledger = host.flock(root / "ledger.lock")
            try:
                live = _remote_holders(host, holders)
                vcpus = sum(h.need.vcpus for h in live) + need.vcpus
                memory = sum(h.need.memory_mib for h in live) + need.memory_mib
                if vcpus <= capacity.vcpus and memory <= capacity.memory_mib:
                    token = secrets.token_hex(8)
                    path = holders / f"{token}.json"
                    host.create_text(path, json.dumps({
                        "pid": os.getpid(), "host": socket.gethostname(), "label": label,
                        "vcpus": need.vcpus, "memory_mib": need.memory_mib}))
                    held = host.flock(path)  # before anyone can count it: we hold the ledger
                    mine = (held, path, Holder(token, os.getpid(), label, need))
                    break
            finally:
                ledger.release()
            if on_wait is not None:
                on_wait(live)
            _wait_for_any_remote(host, [holders / f"{h.token}.json" for h in live])
        yield mine[2]
    finally:
        try:
            if mine is not None:
                with contextlib.suppress(InfrastructureError):  # a stale file is removed later
                    host.remove(mine[1])  # removed first: a waiter then never counts it
                mine[0].release()  # the lock goes: a waiter blocked on it wakes up
        finally:
            host.close()  # a lost connection released the lock already


def _remote_holders(host: SshHost, holders: Path) -> list[Holder]:
    """The live leases of a remote gate (stale holder files removed). Call with its ledger
    lock held."""
    out = host.run(["sh", "-c", _COUNT_SCRIPT, "sh", str(holders)])
    if out.rc != 0:
        raise InfrastructureError(f"{host.description}: cannot count the capacity leases in "
                                  f"{holders}: {out.stderr.strip()}",
                                  "check that flock (util-linux) is installed there")
    live = []
    for line in out.stdout.splitlines():
        name, _, raw = line.partition("\t")
        try:
            data = json.loads(raw)
            live.append(Holder(name.removesuffix(".json"), int(data["pid"]), str(data["label"]),
                               Capacity(int(data["vcpus"]), int(data["memory_mib"]))))
        except (ValueError, KeyError, TypeError):
            continue  # a holder file not written yet cannot be locked: never seen here
    return live


def _wait_for_any_remote(host: SshHost, holder_files: list[Path]) -> None:
    """`_wait_for_any` on the host: a thread per holder blocks in flock there. A thread left
    blocked ends when its holder lets go, or when this process closes the connection."""
    done = threading.Event()

    def wait_one(path: Path) -> None:
        with contextlib.suppress(InfrastructureError):
            host.flock(path, shared=True).release()
        done.set()

    for path in holder_files:
        threading.Thread(target=wait_one, args=(path,), name=f"capacity-wait-{path.stem}",
                         daemon=True).start()
    done.wait()

"""Embedded libvirt roots for parallel workers, and the sweep of roots whose worker died.

libvirt runs one embedded QEMU driver per process, and one process per root (it locks
`ROOT/run/qemu/driver.pid`), so each pytest-xdist worker needs a root of its own. Worker roots
are numbered slots under the cache (`libvirt-workers/0`, `1`, ...): a process claims the first
slot whose `N.lock` it can flock and keeps it until it exits. Reusing slots keeps libvirt's
QEMU capability cache warm across runs (a fresh root probes QEMU for seconds).

A worker killed mid-run leaves its QEMU running under its slot. The next matrix run, before
its workers start, claims every free slot in turn and, where a domain is left, sweeps it in a
`hotadd sweep` subprocess (this process may hold only one embedded root), which destroys the
domains whose owner process is gone.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness import paths
from harness.errors import InfrastructureError, InputError
from harness.host.connection import EMBED_ROOT_MAX
from harness.host.procfs import proc_stat

WORKERS = "libvirt-workers"


@dataclass(frozen=True)
class WorkerRoot:
    """A claimed slot: its root and the open lock file that claims it (closed on exit)."""

    path: Path
    lock_fd: int

    @property
    def uri(self) -> str:
        return f"qemu:///embed?root={self.path}"

    def release(self) -> None:
        os.close(self.lock_fd)


def workers_dir() -> Path:
    path = paths.cache_dir() / WORKERS
    path.mkdir(parents=True, exist_ok=True)
    return path


def _try_claim(slot: int) -> WorkerRoot | None:
    fd = os.open(workers_dir() / f"{slot}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return WorkerRoot(workers_dir() / str(slot), fd)


def claim_worker_root() -> WorkerRoot:
    """The lowest slot no other process holds, claimed for this process."""
    slot = 0
    while (claimed := _try_claim(slot)) is None:
        slot += 1
    if len(str(claimed.path)) > EMBED_ROOT_MAX:
        claimed.release()
        raise InputError(
            f"worker libvirt roots under {workers_dir()} would be longer than "
            f"{EMBED_ROOT_MAX} characters: QEMU's monitor sockets under them would exceed the "
            "107-byte UNIX socket path limit",
            "set HOTADD_CACHE_DIR to a shorter directory (e.g. /var/tmp/hotadd)")
    return claimed


def qemu_cmdlines() -> Iterator[tuple[int, str]]:
    """(pid, command line) of every running QEMU process on this host."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "qemu-system" in cmdline:
            yield int(proc.name), cmdline


def qemu_pids_mentioning(text: str) -> list[int]:
    """PIDs of running QEMU processes whose command line contains `text` (a root or a name)."""
    return [pid for pid, cmdline in qemu_cmdlines() if text in cmdline]


def process_stopped(pid: int) -> bool:
    """Whether process `pid` is stopped (state T: a stop signal; t: a tracer)."""
    stat = proc_stat(pid)
    return stat is not None and stat.state in ("T", "t")


def has_leftovers(root: Path) -> bool:
    """A domain's status file or a QEMU process under `root`: something a sweep must clear."""
    return any((root / "run" / "qemu").glob("*.xml")) or bool(qemu_pids_mentioning(str(root)))


def _free_slots() -> Iterator[WorkerRoot]:
    for lock in sorted(workers_dir().glob("*.lock")):
        if lock.stem.isdigit() and (claimed := _try_claim(int(lock.stem))) is not None:
            yield claimed


@contextmanager
def _claimed(root: WorkerRoot) -> Iterator[WorkerRoot]:
    try:
        yield root
    finally:
        root.release()


def sweep_dead_worker_roots() -> list[str]:
    """Sweep every worker root no process holds that has leftovers; returns what was said."""
    said = []
    for free in _free_slots():
        with _claimed(free) as root:
            if not has_leftovers(root.path):
                continue
            proc = subprocess.run([sys.executable, "-m", "harness", "sweep", "--libvirt-uri",
                                   root.uri], capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise InfrastructureError(
                    f"could not sweep the dead worker root {root.path}: "
                    f"{proc.stderr.strip()[-500:]}",
                    f"run 'hotadd sweep --libvirt-uri {root.uri}' and read its error")
            said.append(f"{root.path}: {proc.stdout.strip()}")
    return said

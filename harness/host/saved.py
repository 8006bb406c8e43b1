"""Saved guests: memory states (virDomainSave images) kept between runs, keyed by their inputs.

A cold boot to "ready" costs seconds (a minute on Windows); restoring a saved state costs about
one. The store keeps one entry per key: a directory holding the save image, the boot console
(the ready marker is in it), copies of the guest's writable files and `entry.json`. Keys are
digests of everything that shapes the saved state (see `harness.warm`); this module knows
nothing about guests, only about entries, their locks and their size.

Concurrency (several runs, several processes, one cache directory):
- every key has a lock file `<key>.lock` (flock). Readers hold it shared while they copy out of
  or restore from the entry; the one run that creates an entry holds it exclusively from the
  moment it finds none until the entry is published, so a second run wanting the same key
  waits for it and restores instead of booting twice;
- an entry appears at once or not at all: it is written into `.tmp-<key>-<pid>-...` and renamed
  into place (rename(2) is atomic within a file system);
- eviction takes the lock exclusively without waiting and skips entries in use, renames the
  entry away, removes it, and unlinks the lock file while still holding it; lockers re-check
  that the file they locked is still the one at the path, so an unlinked lock is never trusted.

The store is bounded (HOTADD_SAVED_MAX_MIB, default 4096): least recently used entries go first.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import paths
from harness.errors import InputError

SAVE_IMAGE = "state.save"
BOOT_CONSOLE = "serial.log"
FILES_DIR = "files"
ENTRY_FILE = "entry.json"  # written last: an entry without it is incomplete
USED_FILE = "used"  # its mtime is the entry's last use (LRU order)
DEFAULT_LIMIT_MIB = 4096
_TMP = ".tmp-"
_TRASH = ".trash-"
_DIGESTS = "digests.json"


def store_dir() -> Path:
    """Where saved guests live: HOTADD_SAVED_DIR, else `<cache>/saved`."""
    env = os.environ.get("HOTADD_SAVED_DIR")
    path = Path(env) if env else paths.cache_dir() / "saved"
    path.mkdir(parents=True, exist_ok=True)
    return path


def limit_bytes() -> int:
    """The store's size bound from HOTADD_SAVED_MAX_MIB (MiB), default 4096."""
    raw = os.environ.get("HOTADD_SAVED_MAX_MIB", str(DEFAULT_LIMIT_MIB))
    try:
        mib = int(raw)
    except ValueError:
        mib = -1
    if mib < 0:
        raise InputError(f"HOTADD_SAVED_MAX_MIB={raw!r} is not a size in MiB",
                         "set it to a whole number of MiB (0 keeps no saved guests)")
    return mib * 1024 * 1024


@dataclass(frozen=True)
class Key:
    """What a saved state was made from (`inputs`, shown to people) and its digest (the key)."""

    inputs: Mapping[str, Any]

    @property
    def digest(self) -> str:
        text = json.dumps(self.inputs, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class _Layout:
    """An entry's directory: the save image, the boot console, and the guest's files."""

    path: Path

    @property
    def image(self) -> Path:
        return self.path / SAVE_IMAGE

    @property
    def console(self) -> Path:
        return self.path / BOOT_CONSOLE


@dataclass(frozen=True)
class Entry(_Layout):
    """A published entry, read while its lock is held."""

    key: str
    meta: Mapping[str, Any]

    def file(self, name: str) -> Path:
        return self.path / FILES_DIR / name


@dataclass(frozen=True)
class Staging(_Layout):
    """Where the creating run writes a new entry before `Claim.publish` renames it in."""

    def add_file(self, source: Path) -> None:
        (self.path / FILES_DIR).mkdir(exist_ok=True)
        shutil.copyfile(source, self.path / FILES_DIR / source.name)


def entry_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _open_locked(lock_path: Path, flags: int) -> int | None:
    """Open and flock `lock_path`; None if LOCK_NB was asked and another holds it. Loops until
    the locked file is still the one at the path (an evictor may have unlinked it)."""
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _read_entry(path: Path, key: str) -> Entry | None:
    try:
        meta = json.loads((path / ENTRY_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not (path / SAVE_IMAGE).is_file():
        return None
    return Entry(path, key, meta)


class Claim:
    """A run's hold on one key: either an `entry` to restore from (lock shared, or exclusive
    if this run found it only after waiting), or nothing yet and the exclusive right to create
    it (`staging`, then `publish`)."""

    def __init__(self, store: SavedStore, key: str, fd: int, entry: Entry | None) -> None:
        self.store = store
        self.key = key
        self._fd = fd
        self.entry = entry
        self._staging: Staging | None = None

    @property
    def creating(self) -> bool:
        return self.entry is None

    def staging(self) -> Staging:
        """A fresh directory for the new entry (only when `creating`)."""
        if self.entry is not None:
            raise InputError(f"saved guest {self.key} exists already", "restore it instead")
        if self._staging is None:
            path = self.store.root / f"{_TMP}{self.key}-{os.getpid()}-{secrets.token_hex(3)}"
            path.mkdir()
            self._staging = Staging(path)
        return self._staging

    def publish(self, meta: Mapping[str, Any]) -> Entry:
        """Write entry.json and move the staged entry into place, atomically."""
        staging = self.staging()
        (staging.path / ENTRY_FILE).write_text(json.dumps(
            {**meta, "key": self.key, "created": time.time(),
             "bytes": entry_size(staging.path)}, indent=2, sort_keys=True) + "\n")
        (staging.path / USED_FILE).touch()
        target = self.store.entry_path(self.key)
        if target.exists():  # an incomplete leftover of a crashed creator: we hold the lock
            shutil.rmtree(target)
        staging.path.rename(target)
        self._staging = None
        entry = _read_entry(target, self.key)
        assert entry is not None
        self.entry = entry
        return entry

    def release(self) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging.path, ignore_errors=True)
            self._staging = None
        if self._fd >= 0:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = -1


class SavedStore:
    """The saved guests under `root`, at most `limit` bytes in all."""

    def __init__(self, root: Path | None = None, limit: int | None = None) -> None:
        self.root = root if root is not None else store_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        self.limit = limit if limit is not None else limit_bytes()

    def entry_path(self, key: str) -> Path:
        return self.root / key

    def lock_path(self, key: str) -> Path:
        return self.root / f"{key}.lock"

    @contextlib.contextmanager
    def claim(self, key: str, on_wait: Callable[[], None] | None = None) -> Iterator[Claim]:
        """Hold `key`: its entry (to restore from), or the right to create it.

        A run that finds no entry waits for any other run creating the same key (calling
        `on_wait` first), then looks again, so two runs wanting one key at once boot once
        between them.
        """
        lock = self.lock_path(key)
        fd = self._lock(lock, fcntl.LOCK_SH, on_wait)
        entry = _read_entry(self.entry_path(key), key)
        if entry is None:
            os.close(fd)
            fd = self._lock(lock, fcntl.LOCK_EX, on_wait)
            entry = _read_entry(self.entry_path(key), key)
        if entry is not None:
            os.utime(entry.path / USED_FILE)
        claim = Claim(self, key, fd, entry)
        try:
            yield claim
        finally:
            claim.release()

    @staticmethod
    def _lock(lock: Path, mode: int, on_wait: Callable[[], None] | None) -> int:
        """flock `lock` in `mode`, calling `on_wait` first if another run holds it."""
        fd = _open_locked(lock, mode | fcntl.LOCK_NB)
        if fd is None:  # another run creates (or reads) it: wait for that run
            if on_wait is not None:
                on_wait()
            fd = _open_locked(lock, mode)
        assert fd is not None
        return fd

    def entries(self) -> list[Entry]:
        """Published entries, least recently used first."""
        found = []
        for path in self.root.iterdir():
            if path.is_dir() and not path.name.startswith("."):
                entry = _read_entry(path, path.name)
                if entry is not None:
                    found.append(entry)
        return sorted(found, key=lambda e: _last_used(e.path))

    def size(self) -> int:
        return sum(entry_size(e.path) for e in self.entries())

    def evict(self, key: str) -> bool:
        """Remove one entry unless a run holds it; True if it was removed."""
        lock = self.lock_path(key)
        fd = _open_locked(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if fd is None:
            return False
        try:
            target = self.entry_path(key)
            if target.exists():
                trash = self.root / f"{_TRASH}{key}-{secrets.token_hex(3)}"
                target.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)
            lock.unlink(missing_ok=True)  # while held: lockers re-check the inode
            return True
        finally:
            os.close(fd)

    def trim(self) -> list[str]:
        """Evict least recently used entries until the store fits its bound; returns the keys
        removed. Entries in use stay (they go on a later trim)."""
        removed = []
        entries = self.entries()
        total = sum(entry_size(e.path) for e in entries)
        for entry in entries:
            if total <= self.limit:
                break
            size = entry_size(entry.path)
            if self.evict(entry.key):
                removed.append(entry.key)
                total -= size
        return removed

    def sweep(self) -> list[str]:
        """Remove what crashed runs left (staging dirs of dead processes, trash, incomplete
        entries, lock files without an entry), then trim. Returns what was removed."""
        from harness.host.machine import owner_alive

        removed = []
        for path in sorted(self.root.iterdir()):
            name = path.name
            if name.startswith(_TMP):
                try:
                    pid = int(name.removeprefix(_TMP).split("-")[1])
                except (IndexError, ValueError):
                    pid = -1
                if pid > 0 and owner_alive(pid):
                    continue
                shutil.rmtree(path, ignore_errors=True)
                removed.append(name)
            elif name.startswith(_TRASH):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(name)
            elif path.is_dir() and _read_entry(path, name) is None:
                if self.evict(name):
                    removed.append(name)
            elif name.endswith(".lock") and not self.entry_path(name[:-5]).exists():
                fd = _open_locked(path, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if fd is not None:
                    try:
                        if not self.entry_path(name[:-5]).exists():
                            path.unlink(missing_ok=True)
                    finally:
                        os.close(fd)
        return removed + self.trim()


def _last_used(path: Path) -> float:
    try:
        return (path / USED_FILE).stat().st_mtime
    except OSError:
        return 0.0


# --- file digests, remembered by (path, size, mtime, inode) ----------------------------------

def file_digest(path: Path, memo_dir: Path | None = None) -> str:
    """sha256 of a file's content. Remembered per (path, size, mtime_ns, inode) in the store,
    so a multi-GiB golden image is read once, not on every run."""
    st = path.stat()
    ident = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
    memo_file = (memo_dir if memo_dir is not None else store_dir()) / _DIGESTS
    try:
        memo: dict[str, str] = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    if ident in memo:
        return memo[ident]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    live = {k: v for k, v in memo.items() if Path(k.rsplit(":", 3)[0]).exists()}
    live[ident] = digest
    tmp = memo_file.with_name(f"{_DIGESTS}.{os.getpid()}.{secrets.token_hex(3)}")
    tmp.write_text(json.dumps(live, indent=0, sort_keys=True))
    tmp.replace(memo_file)  # atomic: a concurrent writer's memo is lost, never torn
    return digest

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
  into place (rename(2) is atomic within a file system). The sweep removes a staging dir only
  under its key's lock taken without waiting: its creator holds that lock until it is done;
- eviction takes the lock exclusively without waiting and skips entries in use, renames the
  entry away, removes it, and unlinks the lock file while still holding it; lockers re-check
  that the file they locked is still the one at the path, so an unlinked lock is never trusted.

The store is bounded (HOTADD_SAVED_MAX_MIB, default 4096): least recently used entries go first.

A remote libvirt host (`qemu+ssh://`) keeps its own store, under its hotadd directory
(`<HOTADD_REMOTE_CACHE_DIR>/saved`), where its QEMU saves and restores: the same protocol, each
file operation over SFTP or a command there, each lock a flock(1) held by a command on the
controller's SSH connection (`harness.host.target`), so a lock dies with the controller that
held it. Its bound is the controlling process's HOTADD_SAVED_MAX_MIB.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import paths
from harness.errors import InfrastructureError, InputError
from harness.host.target import LOCAL, FileLock, HostTarget

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
    """Where the creating run writes a new entry before `Claim.publish` renames it in (on the
    store's host)."""

    target: HostTarget = LOCAL

    def add_file(self, source: Path) -> None:
        """A copy of `source` (a file on the same host), made there."""
        self.target.mkdir(self.path / FILES_DIR)
        self.target.copy(source, self.path / FILES_DIR / source.name)

    def add_console(self, local: Path) -> None:
        """The boot console, from this machine (its run read it through libvirt's stream)."""
        self.target.put(local, self.console)


def _tree_size(target: HostTarget, path: Path) -> int:
    return sum(_tree_size(target, path / name) if is_dir else size
               for name, size, _mtime, is_dir in target.listdir(path))


def entry_size(path: Path, target: HostTarget = LOCAL) -> int:
    return _tree_size(target, path)


def _read_entry(target: HostTarget, path: Path, key: str) -> Entry | None:
    try:
        meta = json.loads(target.read_text(path / ENTRY_FILE))
    except (OSError, ValueError, InfrastructureError):
        return None
    if not target.exists(path / SAVE_IMAGE):
        return None
    return Entry(path, key, meta)


class Claim:
    """A run's hold on one key: either an `entry` to restore from (lock shared, or exclusive
    if this run found it only after waiting), or nothing yet and the exclusive right to create
    it (`staging`, then `publish`)."""

    def __init__(self, store: SavedStore, key: str, lock: FileLock, entry: Entry | None) -> None:
        self.store = store
        self.key = key
        self._lock: FileLock | None = lock
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
            self.store.target.mkdir(path, exist_ok=False)
            self._staging = Staging(path, self.store.target)
        return self._staging

    def publish(self, meta: Mapping[str, Any]) -> Entry:
        """Write entry.json and move the staged entry into place, atomically."""
        staging = self.staging()
        target = self.store.target
        size = _tree_size(target, staging.path)
        target.write_text(staging.path / ENTRY_FILE, json.dumps(
            {**meta, "key": self.key, "created": time.time(), "bytes": size},
            indent=2, sort_keys=True) + "\n")
        target.write_text(staging.path / USED_FILE, "")
        path = self.store.entry_path(self.key)
        if target.exists(path):  # an incomplete leftover of a crashed creator: we hold the lock
            target.remove(path)
        target.rename(staging.path, path)
        self._staging = None
        entry = _read_entry(target, path, self.key)
        assert entry is not None
        self.entry = entry
        return entry

    def release(self) -> None:
        if self._staging is not None:
            with contextlib.suppress(OSError, InfrastructureError):
                self.store.target.remove(self._staging.path)
            self._staging = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None


class SavedStore:
    """The saved guests under `root` on `target` (this machine, or a remote libvirt host's
    `<cache>/saved`), at most `limit` bytes in all. Every file and lock operation goes through
    the host seam (`harness.host.target`): on this machine they are the same system calls as
    ever; on a remote host SFTP requests and commands there, its locks held by flock commands
    on the SSH connection, so a killed controller's locks end with its connection."""

    def __init__(self, root: Path | None = None, limit: int | None = None,
                 target: HostTarget = LOCAL) -> None:
        self.target = target
        if root is None:
            root = store_dir() if not target.remote else target.cache_root() / "saved"
        self.root = root
        target.mkdir(root)
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
        lock = self._lock(key, True, on_wait)
        try:
            entry = _read_entry(self.target, self.entry_path(key), key)
            if entry is None:
                lock.release()
                lock = self._lock(key, False, on_wait)
                entry = _read_entry(self.target, self.entry_path(key), key)
            if entry is not None:
                self.target.touch(entry.path / USED_FILE)
        except BaseException:
            lock.release()
            raise
        claim = Claim(self, key, lock, entry)
        try:
            yield claim
        finally:
            claim.release()

    def _lock(self, key: str, shared: bool, on_wait: Callable[[], None] | None) -> FileLock:
        """Lock `key` (shared or exclusive), calling `on_wait` first if another run holds it."""
        lock = self.target.lock(self.lock_path(key), shared, wait=False)
        if lock is None:  # another run creates (or reads) it: wait for that run
            if on_wait is not None:
                on_wait()
            lock = self.target.lock(self.lock_path(key), shared)
        assert lock is not None
        return lock

    def entries(self) -> list[Entry]:
        """Published entries, least recently used first."""
        found = []
        for name, _size, _mtime, is_dir in self.target.listdir(self.root):
            if is_dir and not name.startswith("."):
                entry = _read_entry(self.target, self.root / name, name)
                if entry is not None:
                    found.append(entry)
        return sorted(found, key=self._last_used)

    def size(self) -> int:
        return sum(entry_size(e.path, self.target) for e in self.entries())

    def evict(self, key: str) -> bool:
        """Remove one entry unless a run holds it; True if it was removed."""
        lock = self.target.lock(self.lock_path(key), wait=False)
        if lock is None:
            return False
        try:
            path = self.entry_path(key)
            if self.target.exists(path):
                trash = self.root / f"{_TRASH}{key}-{secrets.token_hex(3)}"
                self.target.rename(path, trash)
                self.target.remove(trash)
            self.target.remove(self.lock_path(key))  # while held: lockers re-check the file
            return True
        finally:
            lock.release()

    def trim(self) -> list[str]:
        """Evict least recently used entries until the store fits its bound; returns the keys
        removed. Entries in use stay (they go on a later trim)."""
        removed = []
        sized = [(e, entry_size(e.path, self.target)) for e in self.entries()]
        total = sum(size for _e, size in sized)
        for entry, size in sized:
            if total <= self.limit:
                break
            if self.evict(entry.key):
                removed.append(entry.key)
                total -= size
        return removed

    def sweep(self) -> list[str]:
        """Remove what crashed runs left (staging dirs nobody is creating, trash, incomplete
        entries, lock files without an entry), then trim. Returns what was removed.

        A staging dir is judged by its key's lock, not by a pid (which means nothing on
        another machine, and may be reused): its creator holds the lock exclusively until it
        publishes or gives up, so a lock taken without waiting means its creator is gone."""
        removed = []
        listed = sorted(self.target.listdir(self.root))
        names = {name for name, *_ in listed}
        for name, _size, _mtime, is_dir in listed:
            path = self.root / name
            if name.startswith(_TMP):
                if self._remove_unless_locked(name.removeprefix(_TMP).split("-")[0], path):
                    removed.append(name)
            elif name.startswith(_TRASH):
                self.target.remove(path)
                removed.append(name)
            elif is_dir and _read_entry(self.target, path, name) is None:
                if self.evict(name):
                    removed.append(name)
            elif name.endswith(".lock") and name.removesuffix(".lock") not in names:
                self._remove_unless_locked(name.removesuffix(".lock"), None)
        return removed + self.trim()

    def _remove_unless_locked(self, key: str, leftover: Path | None) -> bool:
        """Under `key`'s lock taken without waiting: remove `leftover`, and the lock file if
        the key has no entry. False if a run holds the lock."""
        lock = self.target.lock(self.lock_path(key), wait=False)
        if lock is None:
            return False
        try:
            if leftover is not None:
                self.target.remove(leftover)
            if not self.target.exists(self.entry_path(key)):
                self.target.remove(self.lock_path(key))  # while held: lockers re-check it
            return True
        finally:
            lock.release()

    def _last_used(self, entry: Entry) -> float:
        for name, _size, mtime, _is_dir in self.target.listdir(entry.path):
            if name == USED_FILE:
                return mtime
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

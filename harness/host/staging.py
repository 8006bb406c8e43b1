"""Guest files on a remote host: a content-addressed cache filled over SFTP.

A remote libvirt host's QEMU can only open files on that host, so each input file of a domain
(the reference guest's kernel and initramfs; a Windows golden image and driver by the same
code) is staged once into `CACHE/files/<sha256>` there and the domain names that copy. Only
missing files are sent; a file is written under a temporary name, its hash checked on the host,
and renamed into place (rename(2) is atomic: two runs staging the same file at once both end
with one whole copy). The cache is bounded (`HOTADD_REMOTE_CACHE_MAX_MIB`, least recently
used first; staging a file touches it). Idea from microsoft/lisa's libvirt platform, which
copies base images to the host before defining domains, and checks before copying.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from harness.errors import InfrastructureError, InputError
from harness.host.saved import file_digest
from harness.host.target import HostTarget

FILES = "files"
PART = ".part"
MAX_ENV = "HOTADD_REMOTE_CACHE_MAX_MIB"
MAX_DEFAULT_MIB = 20480


@dataclass(frozen=True)
class Staged:
    local: Path
    remote: Path
    digest: str
    sent: bool  # False: the host had it already


def files_dir(target: HostTarget) -> Path:
    return target.cache_root() / FILES


def limit_bytes() -> int:
    raw = os.environ.get(MAX_ENV, str(MAX_DEFAULT_MIB))
    try:
        mib = int(raw)
    except ValueError:
        raise InputError(f"{MAX_ENV}={raw!r} is not a number of MiB",
                         f"set {MAX_ENV} to an integer, e.g. {MAX_DEFAULT_MIB}") from None
    return max(mib, 0) * 2**20


def part_name(digest: str) -> str:
    """The temporary name a stager writes: the owner's host and pid in it, so the sweep
    removes the parts of stagers that died and never a live one's."""
    return f".{digest}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(3)}{PART}"


def part_owner(name: str) -> tuple[str, int] | None:
    """(host, pid) of a part file's stager, None if `name` is not one."""
    if not (name.startswith(".") and name.endswith(PART)):
        return None
    fields = name[: -len(PART)].split(".")
    try:
        return ".".join(fields[2:-2]), int(fields[-2])
    except (IndexError, ValueError):
        return None


def stage(target: HostTarget, local: Path) -> Staged:
    """`local` on the host, by content: `CACHE/files/<sha256>`."""
    if not local.is_file():
        raise InputError(f"{local} does not exist, so it cannot be sent to the host",
                         "build or fix the path of the guest's file")
    digest = file_digest(local)
    directory = files_dir(target)
    remote = directory / digest
    target.mkdir(directory)
    if target.exists(remote):
        target.touch(remote)
        return Staged(local, remote, digest, sent=False)
    part = directory / part_name(digest)
    try:
        target.put(local, part)
        got = target.sha256(part)
        if got != digest:
            raise InfrastructureError(
                f"{target.description}: {local} arrived with sha256 {got}, not {digest}",
                "check the host's disk; run again (the damaged copy was removed)")
        target.rename(part, remote)
    finally:
        with contextlib.suppress(InfrastructureError):
            target.remove(part)
    return Staged(local, remote, digest, sent=True)


def trim(target: HostTarget, keep: set[Path], limit: int | None = None) -> list[Path]:
    """Remove least recently used staged files until the cache fits its bound; never one in
    `keep` (the files the caller is about to use). Returns what was removed.

    A file another run staged a moment ago can be evicted before its domain starts only if
    the bound is smaller than what runs use at once: set the bound above that."""
    limit = limit_bytes() if limit is None else limit
    directory = files_dir(target)
    entries = [(mtime, size, directory / name) for name, size, mtime, is_dir
               in target.listdir(directory) if not is_dir and part_owner(name) is None]
    total = sum(size for _, size, _ in entries)
    removed: list[Path] = []
    for _mtime, size, path in sorted(entries):
        if total <= limit:
            break
        if path in keep:
            continue
        target.remove(path)
        total -= size
        removed.append(path)
    return removed

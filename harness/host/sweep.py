"""Find and remove what an earlier, crashed run left behind: domains, scratch dirs, and
saved-guest leftovers (the saved-guest store is trimmed to its bound here too; a remote host's
store is on that host and swept there).

A process killed while holding an embedded libvirt connection leaves its QEMU running; the next
open of the same root reconnects to it. Every domain the harness starts carries its owner's pid
and host in its metadata, so a sweep removes exactly the runs whose owner is gone, and never
touches a live run of another process (on a shared `qemu:///system`, say).
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import libvirt

from harness import paths
from harness.errors import HostUnreachable, InfrastructureError, LibvirtUnreachable
from harness.host import staging, storage
from harness.host.connection import embed_root, known_uris, open_connection
from harness.host.domain import METADATA_NS, NAME_PREFIX
from harness.host.machine import owner_alive
from harness.host.roots import qemu_cmdlines
from harness.host.saved import SavedStore
from harness.host.target import LOCAL, HostTarget, is_remote_uri, target_for

#: Per-domain QEMU logs kept in an embedded root (the newest, of domains no longer running):
#: enough to read the last runs' QEMU messages, bounded however many runs a lab makes.
KEEP_QEMU_LOGS = 20
#: libvirt.log (in the cache) is rotated to libvirt.log.1 past this size: at most two files.
LIBVIRT_LOG_MAX = 4 * 2**20


@dataclass(frozen=True)
class SweepReport:
    removed_domains: tuple[str, ...]
    removed_scratch: tuple[str, ...]
    kept_live: tuple[str, ...]  # prefixed domains whose owner still runs
    pruned_logs: tuple[str, ...] = ()  # old QEMU logs removed, a rotated libvirt.log
    removed_saved: tuple[str, ...] = ()  # saved-guest leftovers, evicted entries, staged parts

    def describe(self) -> str:
        pruned = (f"; pruned {len(self.pruned_logs)} old log(s)" if self.pruned_logs else "")
        if not (self.removed_domains or self.removed_scratch or self.removed_saved):
            return "sweep: nothing left behind by earlier runs" + pruned
        parts = []
        if self.removed_domains:
            parts.append(f"domains {', '.join(self.removed_domains)}")
        if self.removed_scratch:
            parts.append(f"scratch dirs {', '.join(self.removed_scratch)}")
        if self.removed_saved:
            parts.append(f"saved-guest and staging leftovers {', '.join(self.removed_saved)}")
        return "sweep: removed leftovers of crashed runs: " + "; ".join(parts) + pruned


def prune_logs(conn: libvirt.virConnect, live: set[str]) -> tuple[str, ...]:
    """Keep the logs under the cache bounded: the newest KEEP_QEMU_LOGS per-domain QEMU logs
    of an embedded root (never a running domain's), and libvirt.log rotated once it passes
    LIBVIRT_LOG_MAX. Returns what was removed or rotated."""
    pruned: list[str] = []
    root = embed_root(conn.getURI())
    logs = root / "log" / "qemu" if root is not None else None
    if logs is not None and logs.is_dir():
        old = sorted((p for p in logs.glob("*.log") if p.stem not in live),
                     key=lambda p: p.stat().st_mtime, reverse=True)[KEEP_QEMU_LOGS:]
        for path in old:
            with contextlib.suppress(OSError):
                path.unlink()
                pruned.append(str(path))
    log = paths.cache_root() / paths.LIBVIRT_LOG
    with contextlib.suppress(OSError):
        if log.stat().st_size > LIBVIRT_LOG_MAX:
            log.replace(log.with_name(log.name + ".1"))
            pruned.append(str(log))
    return tuple(pruned)


def _owner(dom: libvirt.virDomain) -> tuple[int, str] | None:
    try:
        raw = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS, 0)
    except libvirt.libvirtError:
        return None
    el = ET.fromstring(raw)
    try:
        return int(el.get("pid", "")), el.get("host", "")
    except ValueError:
        return None


def _scratch_owner(path: Path, target: HostTarget = LOCAL) -> int | None:
    """The pid of the process that owns a scratch dir; None if unknown. On a remote host,
    scratch dirs other machines made count as alive (-1): they are theirs to sweep."""
    try:
        owner = storage.scratch_owner(target.read_text(path / storage.OWNER_FILE))
    except (OSError, InfrastructureError):
        return None
    if owner is None:
        return None
    pid, host = owner
    return pid if host is None or host == socket.gethostname() else -1


def _sweep_staging(target: HostTarget) -> list[str]:
    """Temporary files of stagers on this machine that died (a live one's stay)."""
    removed = []
    here = socket.gethostname()
    for name, _size, _mtime, _is_dir in target.listdir(staging.files_dir(target)):
        owner = staging.part_owner(name)
        if owner is not None and owner[0] == here and not owner_alive(owner[1]):
            target.remove(staging.files_dir(target) / name)
            removed.append(name)
    return removed


def sweep(conn: libvirt.virConnect, target: HostTarget = LOCAL) -> SweepReport:
    """Destroy prefixed domains whose owner process is gone; remove orphaned scratch dirs
    (on `target`, the host `conn` runs QEMU on)."""
    removed: list[str] = []
    live: list[str] = []
    here = socket.gethostname()
    for dom in conn.listAllDomains(0):
        name = dom.name()
        if not name.startswith(NAME_PREFIX):
            continue
        owner = _owner(dom)
        if owner is None or owner[1] != here or owner_alive(owner[0]):
            live.append(name)
            continue
        try:
            if dom.isActive():
                dom.destroy()
            if dom.isPersistent():
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
        removed.append(name)
    scratch: list[str] = []
    root = storage.scratch_root(target)
    for name in sorted(n for n, _size, _mtime, is_dir in target.listdir(root) if is_dir):
        path = root / name
        pid = _scratch_owner(path, target)
        if name in live or (pid is not None and (pid == -1 or owner_alive(pid))):
            continue
        storage.remove_scratch(path, target)
        scratch.append(name)
    running = {dom.name() for dom in conn.listAllDomains(0)}
    saved = SavedStore(target=target).sweep()  # the store of the host QEMU saves on
    if target.remote:  # the logs are this machine's
        return SweepReport(tuple(removed), tuple(scratch), tuple(live),
                           removed_saved=tuple(_sweep_staging(target) + saved))
    return SweepReport(tuple(removed), tuple(scratch), tuple(live), prune_logs(conn, running),
                       tuple(saved))


_QEMU_ROOT = re.compile(r"(/\S+)/lib/qemu/domain-\d+-" + re.escape(NAME_PREFIX))


def qemu_roots() -> set[Path]:
    """Embedded roots of the hotadd QEMU processes running on this host (from their command
    lines: the monitor's files live under ROOT/lib/qemu/domain-N-NAME)."""
    return {Path(match.group(1)) for _, cmdline in qemu_cmdlines()
            if (match := _QEMU_ROOT.search(cmdline))}


def other_uris(uri: str) -> list[str]:
    """The libvirt URIs hotadd used on this host besides `uri`, and the roots of hotadd QEMU
    processes still running (however they started)."""
    uris = [u for u in known_uris() if u != uri]
    running = {f"qemu:///embed?root={r}" for r in qemu_roots()}
    return uris + sorted(u for u in running if u not in uris and embed_root(u) != embed_root(uri))


def sweep_elsewhere(uri: str) -> tuple[bool, str]:
    """Sweep `uri`: a remote host here, anything else in a subprocess (libvirt allows one
    embedded root per process). (ok, what was said)."""
    if is_remote_uri(uri):
        return sweep_remote(uri)
    proc = subprocess.run([sys.executable, "-m", "harness", "sweep", "--libvirt-uri", uri],
                          capture_output=True, text=True, check=False)
    text = (proc.stdout + proc.stderr).strip().replace("hotadd: error: ", "")
    busy = "another process holds the embedded libvirt root" in text
    return proc.returncode == 0 or busy, (f"in use by a running hotadd, not swept: {text}"
                                          if busy else text)


def sweep_remote(uri: str) -> tuple[bool, str]:
    """Sweep a remote host a run used. One that cannot be reached now (down, gone, its key
    refused) is reported and not an error: `--all` goes on with the rest, and its leftovers
    wait for a sweep that reaches it."""
    target = target_for(uri)
    try:
        conn = open_connection(uri)
        try:
            return True, sweep(conn, target).describe()
        finally:
            conn.close()
    except (LibvirtUnreachable, HostUnreachable) as exc:
        return True, f"unreachable, not swept: {exc.problem} ({exc.fix})"
    finally:
        target.close()


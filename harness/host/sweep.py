"""Find and remove what an earlier, crashed run left behind: domains, scratch dirs, and
saved-guest leftovers (the saved-guest store is trimmed to its bound here too).

A process killed while holding an embedded libvirt connection leaves its QEMU running; the next
open of the same root reconnects to it. Every domain the harness starts carries its owner's pid
and host in its metadata, so a sweep removes exactly the runs whose owner is gone, and never
touches a live run of another process (on a shared `qemu:///system`, say).
"""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import libvirt

from harness import paths
from harness.host import storage
from harness.host.domain import METADATA_NS, NAME_PREFIX
from harness.host.machine import owner_alive
from harness.host.saved import SavedStore


@dataclass(frozen=True)
class SweepReport:
    removed_domains: tuple[str, ...]
    removed_scratch: tuple[str, ...]
    kept_live: tuple[str, ...]  # prefixed domains whose owner still runs
    removed_saved: tuple[str, ...] = ()  # saved-guest leftovers and evicted entries

    def describe(self) -> str:
        if not (self.removed_domains or self.removed_scratch or self.removed_saved):
            return "sweep: nothing left behind by earlier runs"
        parts = []
        if self.removed_domains:
            parts.append(f"domains {', '.join(self.removed_domains)}")
        if self.removed_scratch:
            parts.append(f"scratch dirs {', '.join(self.removed_scratch)}")
        if self.removed_saved:
            parts.append(f"saved-guest leftovers or entries over the size bound "
                         f"{', '.join(self.removed_saved)}")
        return "sweep: removed leftovers of crashed runs: " + "; ".join(parts)


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


def _scratch_owner(path: Path) -> int | None:
    try:
        return int((path / storage.OWNER_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def sweep(conn: libvirt.virConnect) -> SweepReport:
    """Destroy prefixed domains whose owner process is gone; remove orphaned scratch dirs."""
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
    for path in sorted(paths.scratch_dir().iterdir()):
        pid = _scratch_owner(path)
        if path.name in live or (pid is not None and owner_alive(pid)):
            continue
        storage.remove_scratch(path)
        scratch.append(path.name)
    saved = SavedStore().sweep()
    return SweepReport(tuple(removed), tuple(scratch), tuple(live), tuple(saved))

"""Warm starts: a run restores a saved guest (virDomainSave image) instead of booting it.

The first run for a key boots the guest cold to "ready" (probe not loaded), saves it into the
store (`harness.host.saved`) and restores it, like every later run with the same key does. The
key covers everything that shapes the saved state:

- the domain XML with the run-specific parts normalised (name, scratch and run directories,
  the NIC's host ports, the owner metadata), so boot vCPUs, topology, memory, firmware,
  devices, kernel command line and accelerator are in it;
- the content hashes of the guest's files (kernel/initrd or golden image, and what the guest
  kind names in `warm_inputs()`); files in the run's scratch are the run's own and left out;
- the hotadd, libvirt and QEMU versions.

What a save image cannot carry is rebuilt per run (`Machine.resume`): the serial console's
stream (attached while the restored domain is paused) into the run's serial log, the NIC's
127.0.0.1 forwards (QEMU command-line arguments, not device state: each restored QEMU binds a
port of its own and the run reads it back, `harness.host.domain.Forward`),
disk/NVRAM copies in the run's own scratch directory, the owner metadata, and the domain's name
and UUID: every restore runs under its own run name (libvirt refuses a rename through the
restore's XML, so `harness.host.saveimage` restores a per-run copy of the image whose header
names the run), so no two runs ever share a domain name. Nothing of a probe survives: the state
is saved before any probe load, and the guest's wall clock is set again once it answers
(`Session.sync_clock`).

On a remote libvirt host (`hw.host`, `harness.host.target`) the store is that host's own, where
its QEMU saves and restores: the save image, its per-run copy and the disk/NVRAM copies are
made there; only the boot console travels, into this run's local serial log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt

from harness import __version__
from harness.errors import HotaddError, InfrastructureError
from harness.guests.base import GuestKind, HardwareRequest
from harness.host import storage
from harness.host.domain import DomainSpec, Forward, to_xml
from harness.host.machine import Machine, run_name
from harness.host.saved import Claim, Entry, Key, SavedStore, file_digest
from harness.progress import Progress


@dataclass(frozen=True)
class StartInfo:
    """How the run's guest started: booted (cold) or restored from a saved guest (warm)."""

    warm: bool
    key: str | None = None  # the saved-guest key (None: the store was not used)
    saved: bool = False  # this run booted the guest and saved it under `key`
    note: str = ""  # why, for people (e.g. "--cold", "restore failed: ...")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        how = "warm (restored saved guest" if self.warm else "cold (booted"
        extra = "; saved it for later runs" if self.saved else ""
        key = f" {self.key}" if self.key else ""
        note = f"; {self.note}" if self.note else ""
        return f"start: {how}{key}{extra}{note})"


BOOTED = StartInfo(warm=False)
COLD = StartInfo(warm=False, note="--cold")


def normalised_xml(spec: DomainSpec, hw: HardwareRequest) -> str:
    """The domain XML without what differs from run to run of the same guest."""
    neutral = dataclasses.replace(
        spec, metadata={},
        forwards=tuple(Forward(guest_port=f.guest_port, host_port=1) for f in spec.forwards))
    return (to_xml(neutral).replace(str(hw.scratch), "@SCRATCH@")
            .replace(str(hw.run_dir), "@RUN@").replace(spec.name, "@NAME@"))


def key_for(kind: GuestKind, spec: DomainSpec, hw: HardwareRequest,
            host_versions: Mapping[str, str], memo_dir: Path | None = None) -> Key:
    """The saved-guest key of the domain `spec` (built by `kind` for `hw`)."""
    scratch = hw.scratch.resolve()
    files = [p for p in spec.input_files() if not p.resolve().is_relative_to(scratch)]
    files += list(kind.warm_inputs())
    xml = normalised_xml(spec, hw)
    return Key({
        "kind": kind.os.value,
        "hotadd": __version__,
        "libvirt": host_versions.get("libvirt"),
        "qemu": host_versions.get("qemu"),
        "boot_vcpus": spec.vcpus.boot, "max_vcpus": spec.vcpus.maximum,
        "memory_mib": spec.memory_mib,
        "domain_xml": hashlib.sha256(xml.encode()).hexdigest(),
        "files": {str(p.resolve()): file_digest(p, memo_dir) for p in sorted(set(files))},
    })


@contextlib.contextmanager
def start(conn: libvirt.virConnect, kind: GuestKind, hw: HardwareRequest,
          host_versions: Mapping[str, str], progress: Progress, ready_timeout: float,
          store: SavedStore | None = None) -> Iterator[tuple[Machine, StartInfo]]:
    """A running machine for `hw` restored from the saved guest of its key, creating that
    entry first (cold boot to ready, save) if there is none. `hw.scratch` (on `hw.host`)
    becomes the machine's; it is torn down on exit unless its `keep` is set. The store is
    the one on `hw.host`, where QEMU saves and restores (a remote host's own)."""
    store = store if store is not None else SavedStore(target=hw.host)
    if store.limit == 0:  # HOTADD_SAVED_MAX_MIB=0: keep nothing, so save nothing either
        machine, info = _cold(conn, hw, kind, progress, "HOTADD_SAVED_MAX_MIB=0")
        with machine:
            yield machine, info
        return
    try:
        spec = kind.domain_spec(hw)
        key = key_for(kind, spec, hw, host_versions)
    except BaseException:
        storage.remove_scratch(hw.scratch, hw.host)
        raise
    with contextlib.ExitStack() as stack:
        try:
            with store.claim(key.digest, on_wait=lambda: progress.say(
                    f"waiting for another run that is saving guest {key.digest}")) as claim:
                machine, info = _start_locked(conn, kind, hw, spec, claim, key, progress,
                                              ready_timeout)
        except BaseException:
            storage.remove_scratch(hw.scratch, hw.host)  # no machine owns it
            raise
        stack.callback(machine.close)
        with contextlib.suppress(OSError, InfrastructureError):
            store.trim()
        progress.say(info.describe())
        yield machine, info


def _start_locked(conn: libvirt.virConnect, kind: GuestKind, hw: HardwareRequest,
                  spec: DomainSpec, claim: Claim, key: Key, progress: Progress,
                  ready_timeout: float) -> tuple[Machine, StartInfo]:
    saved = False
    if claim.entry is None:
        _create(conn, kind, hw, spec, claim, key, progress, ready_timeout)
        saved = True
    assert claim.entry is not None
    try:
        machine = _restore(conn, spec, hw, claim.entry, progress)
    except HotaddError as exc:
        if saved:
            raise
        # an entry that no longer restores (a host change the key missed): boot instead
        progress.say(f"restore failed ({exc.problem}); booting instead")
        claim.release()
        claim.store.evict(claim.key)
        return _cold(conn, hw, kind, progress, f"restore failed: {exc.problem}")
    return machine, StartInfo(warm=True, key=claim.key, saved=saved)


def _cold(conn: libvirt.virConnect, hw: HardwareRequest, kind: GuestKind, progress: Progress,
          note: str) -> tuple[Machine, StartInfo]:
    if not hw.host.exists(hw.scratch):  # a failed restore removed it
        storage.run_scratch(hw.scratch.name, hw.host)
    spec = kind.domain_spec(hw)
    with progress.stage("boot", f"{spec.name} (cold: {note})"):
        machine = Machine.start(conn, spec, hw.scratch, hw.host)
    return machine, StartInfo(warm=False, note=note)


def _create(conn: libvirt.virConnect, kind: GuestKind, hw: HardwareRequest, spec: DomainSpec,
            claim: Claim, key: Key, progress: Progress, ready_timeout: float) -> Entry:
    """Boot the guest cold to ready under a name of its own (its scratch dir's), save it into
    the claim's staging directory (on the guest's host) and publish it. Its console is read
    here (libvirt's stream) into a directory of this machine, and staged with the image."""
    host = hw.host
    staging = claim.staging()
    scratch = storage.run_scratch(run_name(f"{kind.os.value}-save"), host)
    with contextlib.ExitStack() as stack:
        try:
            boot_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix="hotadd-save-")))
            boot_hw = dataclasses.replace(hw, name=scratch.name, scratch=scratch,
                                          run_dir=boot_dir)
            boot_spec = dataclasses.replace(kind.domain_spec(boot_hw), name=scratch.name)
        except BaseException:
            storage.remove_scratch(scratch, host)
            raise
        with progress.stage("boot", f"{boot_spec.name} ({spec.vcpus.boot} of "
                                    f"{spec.vcpus.maximum} vCPUs), to save it for later runs"):
            machine = Machine.start(conn, boot_spec, scratch, host)
        with machine:
            with progress.stage("boot to ready", "the guest's transport, before saving it"):
                kind.open_session(machine, progress, ready_timeout).close()
            with progress.stage("save", f"{boot_spec.name} ({claim.key})"):
                machine.save(staging.image)
                for path in machine.writable_files():
                    staging.add_file(path)
                staging.add_console(boot_spec.serial_log)
    return claim.publish({"name": boot_spec.name, "inputs": dict(key.inputs)})


def _restore(conn: libvirt.virConnect, spec: DomainSpec, hw: HardwareRequest, entry: Entry,
             progress: Progress) -> Machine:
    """Copy the entry's boot console into this run's serial log (here) and its writable files
    into this run's scratch (on the host, copied there), then restore under the run's own
    name."""
    host = hw.host
    with progress.stage("restore", f"{spec.name} from saved guest {entry.key}"):
        host.get(entry.console, spec.serial_log)
        writable = [d.path for d in spec.disks if not d.readonly]
        for path in writable + ([spec.nvram] if spec.nvram is not None else []):
            host.copy(entry.file(path.name), path)
        return Machine.resume(conn, spec, hw.scratch, entry.image, host)

"""The host and the guests a run (or a pytest session) uses: `open_host` (libvirt, swept),
`Guest` (booted or restored, a session on it, saved and restored again by the plugin).
"""

from __future__ import annotations

import contextlib
import dataclasses
import platform
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import libvirt

from harness import __version__, interrupts, warm
from harness.errors import InputError
from harness.guests.base import GuestKind, HardwareRequest, Session
from harness.host import accel, remote, storage
from harness.host.connection import open_connection, versions
from harness.host.domain import Accelerator
from harness.host.machine import Machine
from harness.host.sweep import sweep
from harness.host.target import LOCAL, HostTarget, target_for
from harness.progress import Progress
from harness.spec import ScenarioSpec
from harness.warm import BOOTED, COLD, StartInfo


def base_versions() -> dict[str, str]:
    return {"hotadd": __version__, "python": platform.python_version()}


@dataclass(frozen=True)
class Host:
    """An open libvirt connection and what it runs (one per `hotadd run`, one per pytest
    session)."""

    conn: libvirt.virConnect
    accelerator: Accelerator
    versions: Mapping[str, str]
    target: HostTarget = LOCAL  # where QEMU and its files are (harness.host.target)


@contextlib.contextmanager
def open_host(spec: ScenarioSpec, progress: Progress) -> Iterator[Host]:
    """Resolve the accelerator, connect to libvirt and sweep what crashed runs left behind."""
    target = target_for(spec.libvirt_uri)
    if not target.remote:
        choice = accel.resolve(spec.accelerator)
        progress.say(f"accelerator: {choice.accelerator.value} ({choice.reason})")
    with progress.stage("connect", "libvirt"):
        conn = open_connection(spec.libvirt_uri)
        try:
            if target.remote:  # the host's own facts, through its libvirt and SSH
                choice = remote.resolve_accel(spec.accelerator, remote.host_caps(conn), target)
                progress.say(f"accelerator: {choice.accelerator.value} ({choice.reason})")
            found = dataclasses.asdict(versions(conn))
            swept = sweep(conn, target)
        except BaseException:
            conn.close()
            target.close()
            raise
        if (swept.removed_domains or swept.removed_scratch or swept.pruned_logs
                or swept.removed_saved):
            progress.say(swept.describe())
    try:
        yield Host(conn, choice.accelerator, {**base_versions(), **found,
                                              "accelerator": choice.accelerator.value}, target)
    finally:
        conn.close()
        target.close()


class Guest:
    """A booted guest: its machine, the guest kind, and a session while one is open.

    `hotadd run` boots one and runs one `Attempt` on it. The pytest plugin boots one per
    session, takes a checkpoint (`save`) before any test touched it and `restore`s it for each
    test, since hot-added vCPUs cannot be removed again. All methods run on the caller's thread.
    """

    def __init__(self, spec: ScenarioSpec, kind: GuestKind, host: Host, machine: Machine) -> None:
        self.spec = spec
        self.kind = kind
        self.host = host
        self.machine = machine
        self.session: Session | None = None
        self._saved: Path | None = None
        self.start_info = BOOTED
        self._clock_stale = False  # restored: the guest's wall clock is the saved one

    @classmethod
    @contextlib.contextmanager
    def boot(cls, spec: ScenarioSpec, kind: GuestKind, host: Host, progress: Progress,
             name: str, run_dir: Path) -> Iterator[Guest]:
        """Start the domain (serial.log and domain.xml in `run_dir`); tear it down on exit
        unless `keep()` was called."""
        with contextlib.ExitStack() as owned:
            # From the scratch dir to the teardown registered below, a Ctrl-C waits (it would
            # leave a QEMU or a scratch dir nobody tears down); it is raised at the block's end.
            with interrupts.shielded():
                scratch = storage.run_scratch(name, host.target)
                hw = HardwareRequest(name=name, vcpus=spec.vcpu_plan,
                                     accelerator=host.accelerator, run_dir=run_dir,
                                     scratch=scratch, memory_mib=spec.memory_mib,
                                     firmware=spec.firmware, host=host.target)
                try:
                    domain_spec = kind.domain_spec(hw)
                except BaseException:
                    storage.remove_scratch(scratch, host.target)
                    raise
                with progress.stage("boot", f"{name} ({spec.vcpu_plan.boot} of "
                                            f"{spec.vcpu_plan.maximum} vCPUs, {spec.topology})"):
                    machine = Machine.start(host.conn, domain_spec, scratch, host.target)
                guest = cls(spec, kind, host, machine)
                owned.callback(guest._teardown, progress)
            yield guest

    def _teardown(self, progress: Progress) -> None:
        with interrupts.shielded():  # from the announcement on: a Ctrl-C waits for the end
            if not self.machine.keep:
                progress.say(f"teardown: {self.name}")
            self.close_session()
            self.machine.close()

    @classmethod
    @contextlib.contextmanager
    def start(cls, spec: ScenarioSpec, kind: GuestKind, host: Host, progress: Progress,
              name: str, run_dir: Path) -> Iterator[Guest]:
        """`boot` with `spec.cold`; otherwise restore the saved guest of this hardware
        (`harness.warm`, the store on the host QEMU runs on), saving one first if there is
        none."""
        if spec.cold:
            with cls.boot(spec, kind, host, progress, name, run_dir) as guest:
                guest.start_info = COLD
                yield guest
            return
        with contextlib.ExitStack() as owned:
            # as in `boot`: from the scratch dir to the registered teardown a Ctrl-C waits
            with interrupts.shielded():
                hw = HardwareRequest(name=name, vcpus=spec.vcpu_plan,
                                     accelerator=host.accelerator, run_dir=run_dir,
                                     scratch=storage.run_scratch(name, host.target),
                                     memory_mib=spec.memory_mib, firmware=spec.firmware,
                                     host=host.target)
                machine, info = owned.enter_context(warm.start(
                    host.conn, kind, hw, host.versions, progress, spec.ready_timeout))
                guest = cls(spec, kind, host, machine)
                guest.start_info = info
                guest._clock_stale = info.warm
                owned.callback(guest._teardown, progress)
            yield guest

    @property
    def name(self) -> str:
        return self.machine.name

    def connect(self, progress: Progress) -> Session:
        """Wait for the guest's transport and open a session (stage "ready")."""
        self.close_session()
        with progress.stage("ready", "the guest's transport"):
            self.session = self.kind.open_session(self.machine, progress, self.spec.ready_timeout)
        if self._clock_stale:
            with progress.stage("clock", "the guest's wall clock"):
                self.session.sync_clock()
            self._clock_stale = False
        return self.session

    def close_session(self) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            session.close()

    def keep(self, progress: Progress) -> None:
        """Leave the guest running when this process lets go of it, for a person to inspect."""
        self.machine.keep = True
        progress.say(f"keeping {self.name} for inspection (serial log "
                     f"{self.machine.spec.serial_log}); 'hotadd sweep' removes it once this "
                     "process has ended")

    def processor_count(self) -> int:
        """Processors the guest OS has online now."""
        if self.session is None:
            raise InputError(f"{self.name} has no open session", "call Guest.connect() first")
        return self.session.processor_count()

    def free_slots(self) -> list[int]:
        """libvirt vCPU ids still free for a hot-add (libvirt's live view)."""
        return sorted(i for i, on in self.machine.vcpu_states().items() if not on)

    # --- checkpoint: the plugin's "known state" without a boot per test -------------------

    @property
    def running(self) -> bool:
        return self.machine.running

    def save(self, path: Path, progress: Progress) -> None:
        """Checkpoint the guest (it stops); every `restore` starts from exactly this state."""
        self.close_session()
        with progress.stage("save", f"{self.name} to {path.name}"):
            self.machine.save(path)
        self._saved = path

    def restore(self, run_dir: Path, progress: Progress) -> None:
        """Start the guest again from the `save`d state, with its serial console (and a copy of
        its live domain XML) in `run_dir`."""
        if self._saved is None:
            raise InputError(f"{self.name} has no saved state", "call Guest.save() first")
        self.close_session()
        with progress.stage("restore", f"{self.name} from {self._saved.name}"):
            self.machine.restore(self._saved, run_dir / "serial.log")
            (run_dir / "domain.xml").write_text(self.machine.dom.XMLDesc(0))
        self._clock_stale = True
        self.start_info = StartInfo(warm=True, note=f"restored {self._saved.name}")

    def stop(self) -> None:
        """Destroy the running domain (its saved state stays for the next `restore`)."""
        self.close_session()
        self.machine.stop()


"""A running guest owned by this process: start, hot-add vCPUs, observe, tear down.

Hot-adds go through libvirt (`setVcpu` / `setVcpusFlags`), never a raw monitor `device_add`,
so libvirt's view stays true; the QEMU monitor is used for queries only. Teardown always runs
(context manager) and removes the domain and the run's scratch directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import os
import re
import secrets
import shutil
import signal
import socket
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import libvirt
import libvirt_qemu

from harness import interrupts
from harness.errors import (
    DomainError,
    GuestCrashed,
    GuestNotReady,
    GuestUnhealthy,
    GuestWedged,
    HotaddError,
    InfrastructureError,
    InputError,
    NoFreeVcpuSlot,
    QemuFrozen,
)
from harness.host import bounded, reaper, remote, saveimage, storage
from harness.host.console import ConsoleStream
from harness.host.domain import (
    METADATA_NS,
    NAME_PREFIX,
    QEMU_NS,
    DomainSpec,
    Forward,
    qemu_netdev_args,
    to_xml,
)
from harness.host.events import DomainEvents, Event, OstEvent, PanicEvent
from harness.host.health import ConsoleAlarm, ConsoleWatch, HealthProblem, Severity
from harness.host.roots import process_stopped, qemu_pids_mentioning
from harness.host.screenshot import ppm_to_png
from harness.host.target import LOCAL, HostTarget

#: The deadline of a libvirt call that should answer at once (a state, an XML, a QMP query).
#: libvirt's own wait for a domain's job lock is 30 s (QEMU_JOB_WAIT_TIME,
#: src/qemu/qemu_domain.h); a monitor call has none (see harness.host.bounded).
CALL_TIMEOUT_S = 20.0
#: virDomainSave/Restore write or read the guest's whole memory.
SAVE_TIMEOUT_S = 300.0
#: virDomainCreateXML launches QEMU and talks QMP to it until the guest CPUs are ready to run;
#: a QEMU that stops answering meanwhile blocks it with no timeout of libvirt's own. Seconds
#: here (TCG, a loaded host); the bound is for a QEMU that will never answer.
START_TIMEOUT_S = 180.0
#: The per-run copy of a saved guest's image, named for this run (`Machine.resume`).
RESTORE_IMAGE = "restore.save"

_STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "no state",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}


def run_name(label: str) -> str:
    """A domain name with the harness prefix and a unique run id, e.g. hotadd-ref-1a2b3c4d."""
    safe = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") or "run"
    return f"{NAME_PREFIX}{safe}-{secrets.token_hex(4)}"


#: A forward in QEMU's `info usernet` (libslirp's slirp_connection_info, src/misc.c: protocol
#: and state, fd, source address and port, destination address and port, queues); a forward's
#: source is the host side. The only way QEMU reports a hostfwd's port (no QMP command does).
_USERNET_FORWARD = re.compile(
    r"TCP\[HOST_FORWARD\]\s+-?\d+\s+127\.0\.0\.1\s+(\d+)\s+\S+\s+(\d+)")


def bound_forwards(usernet: str, wanted: Sequence[Forward]) -> tuple[Forward, ...]:
    """`wanted` with the host ports QEMU bound, from its `info usernet` text."""
    bound = {int(guest): int(host) for host, guest in _USERNET_FORWARD.findall(usernet)}
    missing = [f.guest_port for f in wanted if f.guest_port not in bound]
    if missing:
        raise DomainError(f"QEMU reports no host forward to guest port(s) {missing}; its "
                          f"'info usernet' says: {usernet.strip()!r}",
                          "report it with the run's domain.xml and QEMU's version")
    return tuple(Forward(f.guest_port, bound[f.guest_port]) for f in wanted)


class HotplugMethod(enum.Enum):
    SET_VCPU = "setVcpu"  # virDomainSetVcpu: one named vCPU id
    SET_VCPUS = "setVcpusFlags"  # virDomainSetVcpusFlags: raise the count by one


@dataclass(frozen=True)
class CpuSlot:
    """One CPU slot as QEMU sees it (query-hotpluggable-cpus)."""

    socket_id: int
    die_id: int
    core_id: int
    thread_id: int
    qom_path: str | None  # None while the slot is empty

    @property
    def present(self) -> bool:
        return self.qom_path is not None


@dataclass(frozen=True)
class PluggedVcpu:
    """What one hot-add plugged."""

    libvirt_id: int
    slot: CpuSlot
    method: HotplugMethod
    t_wall: float  # Unix time just before the libvirt call (compare with QEMU event times)
    call_seconds: float  # how long the libvirt call took


@dataclass(frozen=True)
class QemuView:
    """QEMU's own view of the CPUs, independent of libvirt's bookkeeping."""

    slots: tuple[CpuSlot, ...]
    running_cpus: int  # query-cpus-fast entries

    @property
    def present(self) -> int:
        return sum(1 for s in self.slots if s.present)

    def slot_of_vcpu(self, libvirt_id: int) -> CpuSlot | None:
        """The slot libvirt hot-plugged as vcpu<id> (QOM path /machine/peripheral/vcpuN)."""
        for slot in self.slots:
            if slot.qom_path == f"/machine/peripheral/vcpu{libvirt_id}":
                return slot
        return None


def _create(conn: libvirt.virConnect, xml: str, name: str, local: bool,
            serial_log: Path) -> tuple[libvirt.virDomain, ConsoleStream]:
    """virDomainCreateXML, paused, under START_TIMEOUT_S; then the console stream into
    `serial_log` and the resume (`_run_with_console`). Past a deadline, at an error, or at a
    signal (also one a `shielded()` block holds), the half-started domain is killed before
    this returns (QemuFrozen, the error, or KeyboardInterrupt): the call goes on in its worker
    until QEMU is gone."""
    finished = threading.Event()

    def create() -> libvirt.virDomain:
        try:
            return conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED)
        finally:
            finished.set()

    try:
        dom = bounded.call(create, START_TIMEOUT_S, "createXML", abandonable=True)
        return dom, bounded.call(lambda: _run_with_console(dom, serial_log), CALL_TIMEOUT_S,
                                 ATTACH, abandonable=True)
    except bounded.CallTimedOut as late:
        pids = qemu_pids_mentioning(f"guest={name},") if local else []
        stopped = [pid for pid in pids if process_stopped(pid)]
        with interrupts.shielded():
            _abandon_start(conn, name, finished, local)
        how = (f"its QEMU process {stopped[0]} is stopped (SIGSTOP or a debugger)" if stopped
               else "QEMU did not finish starting")
        raise QemuFrozen(
            f"QEMU of {name} is frozen: libvirt's {late.what} did not return within "
            f"{late.timeout:g}s; {how}: no verdict; it was killed",
            "check the host's load and QEMU on the libvirt host, then rerun") from None
    except BaseException:
        with interrupts.shielded():
            _abandon_start(conn, name, finished, local)
        raise


#: What `_run_with_console` does, for the deadline's error.
ATTACH = "openConsole+resume"


def _run_with_console(dom: libvirt.virDomain, serial_log: Path) -> ConsoleStream:
    """Attach the console stream to the paused `dom`, appending to `serial_log`, then let it
    run, so the log has the first byte the firmware writes (QEMU's pty drops output nobody
    reads). Call it under a deadline (`bounded.call`, what=ATTACH). On failure the stream is
    closed and the domain left paused for the caller to destroy."""
    console = ConsoleStream(dom, serial_log)
    try:
        dom.resume()
    except BaseException:
        console.close()
        raise
    return console


def _abandon_start(conn: libvirt.virConnect, name: str, finished: threading.Event,
                   local: bool) -> None:
    """Kill the QEMU of a start we gave up on, until libvirt's call has ended (bounded), and
    destroy the domain if it started after all. virDomainDestroy kills QEMU before it waits
    for the start's job (qemuProcessBeginStopJob), so it also works on a remote host where
    there is no local process to kill. Best effort: what remains, `hotadd sweep` removes."""
    for _ in range(int(START_TIMEOUT_S)):
        for pid in qemu_pids_mentioning(f"guest={name},") if local else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _destroy_by_name(conn, name)
        if finished.wait(1.0):
            break
    _destroy_by_name(conn, name)


def _destroy_by_name(conn: libvirt.virConnect, name: str) -> None:
    with contextlib.suppress(libvirt.libvirtError, bounded.CallTimedOut):
        dom = bounded.call(lambda: conn.lookupByName(name), CALL_TIMEOUT_S, "lookupByName")
        bounded.call(dom.destroy, CALL_TIMEOUT_S, "destroy")


class Machine:
    """A transient domain started by this process. Use `Machine.start(...)` as a context manager.

    Methods run on the caller's thread; events arrive on the libvirt event thread into
    `self.events.log`.
    """

    def __init__(self, conn: libvirt.virConnect, spec: DomainSpec, scratch: Path,
                 dom: libvirt.virDomain, events: DomainEvents, console: ConsoleStream,
                 host: HostTarget = LOCAL) -> None:
        self.conn = conn
        self.host = host  # where QEMU, the scratch dir and the forwards are
        self.console = console  # the serial console, into spec.serial_log (a new one per QEMU)
        self.spec = spec
        self.scratch = scratch
        self.dom = dom
        self.events = events
        self.keep = False  # set True to leave the guest running for a person to inspect
        self.running = True  # False between stop()/save() and restore()
        self._boot_spec = spec
        self._closed = False
        self.health = ConsoleWatch(spec.serial_log)  # alarms: watch_console()
        self._on_sick: Callable[[], None] | None = None
        self._sentinel: threading.Thread | None = None
        self._sentinel_stop = threading.Event()
        self._qemu_pid: int | None = None
        self._qemu_pid_known = False  # looked up once per QEMU (start, restore)
        self._reaped: threading.Event | None = None  # set once this QEMU is reaped (ours)

    # --- lifecycle -----------------------------------------------------------------------

    @classmethod
    def start(cls, conn: libvirt.virConnect, spec: DomainSpec, scratch: Path,
              host: HostTarget = LOCAL) -> Machine:
        """Create and start the transient domain. Owns `scratch` (on `host`) from here: on
        failure it is removed, and nothing is left running. On a remote host the spec's files
        are staged there first (`harness.host.remote.place`). The domain starts paused and runs
        once its console stream is attached (`ConsoleStream`): the serial log misses nothing."""
        spec = _owned(spec, scratch)
        try:
            _check_system_qemu_can_reach(conn, spec)
            if host.remote:
                caps = remote.host_caps(conn)
                placed = remote.place(host, spec, scratch, caps)
                spec = placed.spec
                xml = to_xml(spec, caps.emulator)
            else:
                xml = to_xml(spec)
        except BaseException:
            storage.remove_scratch(scratch, host)
            raise
        xml_copy = spec.serial_log.parent / "domain.xml"
        xml_copy.write_text(xml)
        events = DomainEvents(conn, spec.name)
        try:
            dom, console = _create(conn, xml, spec.name, not host.remote, spec.serial_log)
        except BaseException as exc:
            events.close()
            storage.remove_scratch(scratch, host)
            if isinstance(exc, libvirt.libvirtError):
                raise DomainError(
                    f"libvirt/QEMU refused to start {spec.name}: {exc.get_error_message()}",
                    f"read the domain XML {xml_copy} and run 'hotadd doctor' to check the host",
                ) from exc
            raise
        machine = cls(conn, spec, scratch, dom, events, console, host)
        machine._adopt_qemu()
        interrupts.own(spec.name, f"domain {spec.name} (QEMU running) and scratch dir {scratch}")
        with machine.closed_on_error():
            machine.learn_forwards()
            xml_copy.write_text(dom.XMLDesc(0))  # the live XML, with libvirt's defaults
        return machine

    @classmethod
    def resume(cls, conn: libvirt.virConnect, spec: DomainSpec, scratch: Path,
               image: Path, host: HostTarget = LOCAL) -> Machine:
        """Start `spec`'s domain from a save image that another run made of the same domain
        (`harness.warm`). Owns `scratch` (on `host`, like `image`) from here, like `start`.

        The domain runs under `spec`'s own name and a fresh UUID (a per-run copy of the image,
        `harness.host.saveimage`: libvirt refuses a rename on restore). Everything outside the
        guest's memory comes from `spec`: the serial log (appended to: the caller copies the
        boot console there first; restored paused, resumed once the console stream is
        attached), the NIC's host ports (QEMU command-line
        arguments, not part of the saved state), disk, CD-ROM and NVRAM paths, and the owner
        metadata the sweep reads. On a remote host the spec's input files are staged there
        again first (`remote.place`: the staging cache may have dropped them since the save).
        """
        spec = _owned(spec, scratch)
        events = DomainEvents(conn, spec.name)
        copy = scratch / RESTORE_IMAGE  # in the scratch dir: a crashed run's goes with it
        try:
            if host.remote:
                spec = remote.place(host, spec, scratch, remote.host_caps(conn)).spec
            xml = adapt_saved_xml(saveimage.write_renamed(image, copy, spec.name, host), spec)
            conn.restoreFlags(str(copy), xml, libvirt.VIR_DOMAIN_SAVE_PAUSED)
            dom = conn.lookupByName(spec.name)
            console = bounded.call(lambda: _run_with_console(dom, spec.serial_log),
                                   CALL_TIMEOUT_S, ATTACH)
        except BaseException as exc:
            with interrupts.shielded():
                _destroy_by_name(conn, spec.name)  # restored, paused, but never attached
                events.close()
                storage.remove_scratch(scratch, host)
            if not isinstance(exc, (libvirt.libvirtError, DomainError, OSError,
                                    bounded.CallTimedOut)):
                raise  # not the saved guest's fault (the host's files, a Ctrl-C)
            detail = exc.get_error_message() if isinstance(exc, libvirt.libvirtError) else exc
            raise DomainError(f"libvirt could not restore {spec.name} from {image}: {detail}",
                              "run with --cold to boot instead; 'hotadd sweep' drops saved "
                              "guests that no longer restore") from exc
        finally:
            with contextlib.suppress(OSError, InfrastructureError):
                host.remove(copy)  # QEMU has read it all once the restore returns
        machine = cls(conn, spec, scratch, dom, events, console, host)
        machine._adopt_qemu()
        interrupts.own(spec.name, f"domain {spec.name} (QEMU restored) and scratch dir {scratch}")
        with machine.closed_on_error():
            machine.learn_forwards()
            (spec.serial_log.parent / "domain.xml").write_text(dom.XMLDesc(0))
        return machine

    @contextlib.contextmanager
    def closed_on_error(self) -> Iterator[None]:
        """Tear the machine down if the block fails (its caller never gets it)."""
        try:
            yield
        except BaseException:
            self.close()
            raise

    def learn_forwards(self) -> None:
        """Put the host ports QEMU bound for the spec's forwards into `spec` (a forward asks
        for port 0, and each QEMU, started or restored, binds its own; see `Forward`)."""
        if not self.spec.forwards:
            return
        usernet = self._call(lambda: libvirt_qemu.qemuMonitorCommand(
            self.dom, "info usernet", libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP),
            "info usernet", CALL_TIMEOUT_S)
        self.spec = dataclasses.replace(self.spec,
                                        forwards=bound_forwards(usernet, self.spec.forwards))

    def close(self) -> None:
        """Destroy the domain and remove the scratch dir, unless `keep` is set. Idempotent."""
        if self._closed:
            return
        with interrupts.shielded():  # a Ctrl-C now would leave QEMU or the scratch dir
            self._closed = True
            self._sentinel_stop.set()
            self.events.close()
            if not self.keep:
                self.stop()
                storage.remove_scratch(self.scratch, self.host)
            else:  # a kept guest's console is a person's now (virsh console)
                self.console.close()
            interrupts.release(self.name)

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def name(self) -> str:
        return self.spec.name

    def stop(self) -> None:
        """Destroy the running domain; the scratch dir (and any saved state) stays. The guest's
        state is disposable here (close removes the scratch dir, restore overwrites the disks),
        so a QEMU this process reaps is killed at once rather than asked to exit: libvirt's
        destroy sends SIGTERM and escalates to SIGKILL only if QEMU outlives its wait, "which
        may produce undesirable results, for example unflushed disk cache in the guest"
        (virDomainDestroy, https://libvirt.org/html/libvirt-libvirt-domain.html#virDomainDestroy):
        nothing here outlives the run to care. Once QEMU is reaped, destroy only cleans up."""
        if not self.running:
            return
        self.running = False
        pid = self.qemu_pid()
        reaped = self._reaped
        if pid is not None and reaped is not None:
            if not reaped.is_set():  # once reaped, the pid may be another process's
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            reaped.wait(CALL_TIMEOUT_S)
        elif pid is not None and process_stopped(pid):
            # virDomainDestroy sends SIGTERM, which a stopped QEMU never handles, and SIGKILLs
            # only 10 s later (virProcessKillPainfully, src/util/virprocess.c): do it now.
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        self._qemu_pid_known = False
        try:
            self._call(self.dom.destroy, "destroy", CALL_TIMEOUT_S)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN,
                                            libvirt.VIR_ERR_OPERATION_INVALID):
                raise DomainError(f"libvirt could not stop {self.name}: "
                                  f"{exc.get_error_message()}", "run 'hotadd sweep'") from exc
        finally:
            self._end_console()

    def _end_console(self) -> None:
        """The console stream ends with its QEMU: wait for its last bytes, then let it go."""
        self.console.wait_ended()
        self.console.close()

    # --- checkpoint: a known state without a boot --------------------------------------------

    def save(self, path: Path) -> None:
        """Save the running guest to `path` on its host (virDomainSave: the domain stops) and
        copy its writable disks and NVRAM beside them there, so every `restore` starts from
        exactly this."""
        try:
            self._call(lambda: self.dom.save(str(path)), "save", SAVE_TIMEOUT_S)
        except libvirt.libvirtError as exc:
            raise DomainError(f"libvirt could not save {self.name}: {exc.get_error_message()}",
                              "check free space under the cache directory") from exc
        self.running = False
        self._qemu_pid_known = False
        self._end_console()
        for disk in self.writable_files():
            self.host.copy(disk, _saved_copy(disk))

    def restore(self, saved: Path, serial_log: Path) -> None:
        """Start again from the state `save` wrote to `saved`. The serial console goes to
        `serial_log`, which starts as a copy of the boot console (so markers printed while
        booting, like a guest's ready line, are still there) and is appended to by a new
        console stream, attached while the restored domain is still paused."""
        self._local_only("restoring a saved guest")
        self.stop()
        for disk in self.writable_files():
            shutil.copyfile(_saved_copy(disk), disk)
        shutil.copyfile(self._boot_spec.serial_log, serial_log)
        self.events.close()  # events of the previous incarnation would mislead
        self.events = DomainEvents(self.conn, self.name)
        try:
            self._call(lambda: self.conn.restoreFlags(str(saved), None,
                                                      libvirt.VIR_DOMAIN_SAVE_PAUSED),
                       "restore", SAVE_TIMEOUT_S)
            self.dom = self.conn.lookupByName(self.name)
            self.console = self._call(lambda: _run_with_console(self.dom, serial_log), ATTACH,
                                      CALL_TIMEOUT_S)
        except QemuFrozen:
            _destroy_by_name(self.conn, self.name)  # whatever of it exists, paused
            raise
        except libvirt.libvirtError as exc:
            _destroy_by_name(self.conn, self.name)  # restored, paused, but never attached
            raise DomainError(f"libvirt could not restore {self.name} from {saved}: "
                              f"{exc.get_error_message()}",
                              f"read the serial log {serial_log}; run 'hotadd doctor'") from exc
        self.running = True
        self._qemu_pid_known = False  # a new QEMU
        self._adopt_qemu()
        self.spec = dataclasses.replace(self._boot_spec, serial_log=serial_log)
        self.health.watch(serial_log)
        self.learn_forwards()

    def writable_files(self) -> list[Path]:
        """Files the guest writes (disk overlays, NVRAM): a saved state needs their copies."""
        spec = self._boot_spec
        files = [d.path for d in spec.disks if not d.readonly]
        return files + ([spec.nvram] if spec.nvram is not None else [])

    def _local_only(self, what: str) -> None:
        if self.host.remote:
            raise InputError(f"{what} on a remote libvirt host ({self.host.description}) is "
                             "not supported yet (the pytest plugin's checkpoints are local)",
                             "run the pytest plugin against a local libvirt URI")

    def forwarded_port(self, guest_port: int) -> int:
        for fwd in self.spec.forwards:
            if fwd.guest_port == guest_port:
                return fwd.host_port
        raise InputError(f"{self.name} has no forward for guest port {guest_port}",
                         "add a Forward for it to the domain spec")

    # --- state ---------------------------------------------------------------------------

    def state(self) -> str:
        state, _reason = self._call(self.dom.state, "state", CALL_TIMEOUT_S)
        return _STATE_NAMES.get(state, str(state))

    def _call(self, fn: Callable[[], bounded.T], what: str, timeout: float) -> bounded.T:
        """A libvirt call on this domain under a deadline (see harness.host.bounded); past it,
        QemuFrozen saying what did not return and what QEMU's process is doing."""
        try:
            return bounded.call(fn, timeout, what)
        except bounded.CallTimedOut as late:
            raise self.frozen(f"libvirt's {what} did not return within {late.timeout:g}s"
                              ) from None

    def qemu_pid(self) -> int | None:
        """The QEMU process of this domain, if it runs on this host (found by the domain's
        unique name on its command line; None over a remote URI)."""
        if self.host.remote:  # its QEMU is not a process of this machine
            return None
        if not self._qemu_pid_known:  # one /proc scan per QEMU, not one per check_alive
            pids = qemu_pids_mentioning(f"guest={self.name},")
            self._qemu_pid = pids[0] if len(pids) == 1 else None
            self._qemu_pid_known = True
        return self._qemu_pid

    def _adopt_qemu(self) -> None:
        """Reap this QEMU the moment it exits (harness.host.reaper), if it is our child."""
        pid = self.qemu_pid()
        self._reaped = reaper.watch(pid) if pid is not None else None

    def frozen(self, what: str) -> QemuFrozen:
        """The error for a QEMU that stopped answering: `what` happened; the message says
        whether its process is stopped (SIGSTOP, a debugger) or only silent."""
        pid = self.qemu_pid()
        if pid is not None and process_stopped(pid):
            state = (f"its QEMU process {pid} is stopped (SIGSTOP or a debugger)",
                     f"find who stopped QEMU (kill -CONT {pid} resumes it); ")
        elif pid is not None:
            state = (f"its QEMU process {pid} runs but does not answer", "check the host's load; ")
        else:
            state = ("QEMU does not answer", "check QEMU on the libvirt host; ")
        return QemuFrozen(f"QEMU of {self.name} is frozen: {what}; {state[0]}: no verdict",
                          state[1] + "then rerun (an add must finish within --ack-timeout)")

    def panic(self) -> PanicEvent | None:
        panics = self.events.log.of_type(PanicEvent)
        return panics[0] if panics else None

    def watch_console(self, alarms: Sequence[ConsoleAlarm]) -> None:
        """Judge the serial console by `alarms` (the guest kind's) from now on; the scan
        starts at the beginning of the current console file."""
        self.health.watch(self.spec.serial_log, alarms)

    def on_sick(self, callback: Callable[[], None]) -> None:
        """Call `callback` once, from a sentinel thread, within about a second of the console
        showing an alarm, QEMU reporting a panic or QEMU's process seen stopped; e.g. a
        transport's abort(), so a command blocked on a dead or frozen guest gives up now
        rather than at its timeout (the run's thread then learns the cause from
        check_alive()). Replaces an earlier callback."""
        self._on_sick = callback
        if self._sentinel is None or not self._sentinel.is_alive():
            self._sentinel = threading.Thread(target=self._watch, name=f"sentinel-{self.name}",
                                              daemon=True)
            self._sentinel.start()

    def _watch(self) -> None:
        """The sentinel: reads only the console file, the event log and /proc (no libvirt
        calls, which a frozen QEMU would block)."""
        while not self._sentinel_stop.wait(0.5):
            if (self.health.poll() is not None or self.panic() is not None
                    or self._qemu_stopped()):
                callback, self._on_sick = self._on_sick, None
                if callback is not None:
                    callback()
                return

    def _qemu_stopped(self) -> bool:
        pid = self.qemu_pid() if self.running else None
        return pid is not None and process_stopped(pid)

    def check_alive(self) -> None:
        """Raise GuestCrashed (a panic or bugcheck, with its code and console excerpt),
        GuestWedged (the console showed a soft lockup, RCU stall, hung task, ...) or
        DomainError if the guest is gone. Cheap: call it from every wait loop."""
        problem = self.health.poll()
        panic = self.panic()
        state = self.state()
        pid = self.qemu_pid()
        if pid is not None and process_stopped(pid):  # no verdict can come from a stopped QEMU
            raise self.frozen("seen stopped while the run waited on it")
        crash = problem is not None and problem.alarm.severity is Severity.CRASH
        if panic is not None or state == "crashed" or crash:
            problem = problem or self.health.flush()
            detail = (panic.describe() if panic else
                      problem.describe() if problem is not None else "guest crashed")
            raise GuestCrashed(
                f"{self.name} crashed: {detail}",
                f"read the serial log {self.spec.serial_log} and the screenshot beside it",
                bugcheck=panic.args if panic else None,
                excerpt=problem.excerpt if problem is not None else None,
            )
        if problem is not None:
            raise self.wedged(problem)
        if state not in ("running", "blocked"):
            raise DomainError(f"{self.name} is not running (state: {state})",
                              f"read the serial log {self.spec.serial_log}")

    def cause_of(self, exc: HotaddError) -> HotaddError:
        """`exc`, or the guest's crash behind it: a transport that went silent is often a guest
        that died, and the crash is the error to report."""
        if isinstance(exc, GuestUnhealthy):
            return exc
        try:
            self.check_alive()
        except HotaddError as dead:
            dead.__cause__ = exc
            return dead
        except libvirt.libvirtError:  # the domain itself is gone: the original error stands
            pass
        return exc

    def wedged(self, problem: HealthProblem) -> GuestWedged:
        return GuestWedged(f"{self.name} is wedged: {problem.describe()}",
                           f"read the serial log {self.spec.serial_log}; the guest kernel "
                           "stopped making progress (a guest or QEMU problem, not a verdict)",
                           excerpt=problem.excerpt)

    def serial_text(self) -> str:
        try:
            return self.spec.serial_log.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def wait_serial(self, pattern: str, timeout: float,
                    tick: Callable[[], None] | None = None) -> re.Match[str]:
        """Wait until `pattern` (a regex) appears in the serial log.

        Raises GuestNotReady on timeout, GuestCrashed/DomainError if the guest died meanwhile.
        """
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = rx.search(self.serial_text())
            if match:
                return match
            self.check_alive()
            if time.monotonic() > deadline:
                raise GuestNotReady(
                    f"{self.name}: {pattern!r} did not appear on the serial console in "
                    f"{timeout:.0f}s", f"read the serial log {self.spec.serial_log}")
            if tick is not None:
                tick()
            time.sleep(0.1)

    # --- vCPUs ---------------------------------------------------------------------------

    def vcpu_states(self) -> dict[int, bool]:
        """libvirt's live view: vCPU id -> enabled."""
        root = ET.fromstring(self._call(lambda: self.dom.XMLDesc(0), "XMLDesc", CALL_TIMEOUT_S))
        return {int(v.get("id", "-1")): v.get("enabled") == "yes"
                for v in root.iterfind("./vcpus/vcpu")}

    def monitor(self, command: str, timeout: float = CALL_TIMEOUT_S, **arguments: Any) -> Any:
        """A QMP *query* (never use this to change the guest: libvirt's view would go stale)."""
        if not command.startswith("query-"):
            raise InputError(f"refusing monitor command {command!r}: only query-* are allowed",
                             "change the guest through libvirt APIs")
        payload: dict[str, Any] = {"execute": command}
        if arguments:
            payload["arguments"] = arguments
        try:
            raw = self._call(
                lambda: libvirt_qemu.qemuMonitorCommand(self.dom, json.dumps(payload), 0),
                command, timeout)
        except libvirt.libvirtError as exc:
            raise DomainError(f"QEMU monitor {command} failed on {self.name}: "
                              f"{exc.get_error_message()}", "is the domain running?") from exc
        return json.loads(raw)["return"]

    def qemu_view(self) -> QemuView:
        slots = []
        for entry in self.monitor("query-hotpluggable-cpus"):
            props = entry.get("props", {})
            slots.append(CpuSlot(
                socket_id=int(props.get("socket-id", 0)), die_id=int(props.get("die-id", 0)),
                core_id=int(props.get("core-id", 0)), thread_id=int(props.get("thread-id", 0)),
                qom_path=entry.get("qom-path")))
        slots.sort(key=lambda s: (s.socket_id, s.die_id, s.core_id, s.thread_id))
        return QemuView(slots=tuple(slots), running_cpus=len(self.monitor("query-cpus-fast")))

    def hotadd(self, vcpu_id: int | None = None,
               method: HotplugMethod = HotplugMethod.SET_VCPU,
               timeout: float = CALL_TIMEOUT_S) -> PluggedVcpu:
        """Plug one vCPU: `vcpu_id`, or the lowest free one. Returns what was plugged. The
        libvirt call must return within `timeout` s (QemuFrozen otherwise)."""
        self.check_alive()
        before = self.vcpu_states()
        maximum = len(before)
        free = sorted(i for i, on in before.items() if not on)
        if vcpu_id is None:
            if not free:
                raise NoFreeVcpuSlot(
                    f"{self.name}: no free vCPU slot: all {maximum} vCPUs are online",
                    "raise the max vCPU count (topology) or add fewer vCPUs")
            vcpu_id = free[0]
        elif vcpu_id not in before:
            raise InputError(f"vCPU id {vcpu_id} is out of range 0..{maximum - 1}",
                             f"choose one of the free vCPU ids {free}")
        elif before[vcpu_id]:
            raise NoFreeVcpuSlot(f"{self.name}: vCPU {vcpu_id} is already online",
                                 f"choose one of the free vCPU ids {free}" if free else
                                 "raise the max vCPU count (topology)")
        if method is HotplugMethod.SET_VCPUS and vcpu_id != free[0]:
            raise InputError(f"setVcpusFlags always plugs the lowest free vCPU ({free[0]}), "
                             f"not {vcpu_id}", "use the setVcpu method to choose an id")
        t_wall = time.time()
        t0 = time.monotonic()
        try:
            if method is HotplugMethod.SET_VCPU:
                self._call(lambda: self.dom.setVcpu(str(vcpu_id), 1,
                                                    libvirt.VIR_DOMAIN_AFFECT_LIVE),
                           method.value, timeout)
            else:
                online = sum(before.values())
                self._call(lambda: self.dom.setVcpusFlags(online + 1,
                                                          libvirt.VIR_DOMAIN_AFFECT_LIVE),
                           method.value, timeout)
        except libvirt.libvirtError as exc:
            raise DomainError(
                f"QEMU/libvirt refused to hot-add vCPU {vcpu_id} on {self.name} "
                f"({method.value}): {exc.get_error_message()}",
                "check the topology and that the guest is running (hotadd doctor)",
            ) from exc
        call_seconds = time.monotonic() - t0
        after = self.vcpu_states()
        added = sorted(i for i, on in after.items() if on and not before.get(i, False))
        if added != [vcpu_id]:
            raise DomainError(f"hot-add of vCPU {vcpu_id} on {self.name} changed {added} instead",
                              "this is a libvirt/QEMU inconsistency: report it with domain.xml")
        slot = self.qemu_view().slot_of_vcpu(vcpu_id)
        if slot is None:
            raise DomainError(f"libvirt reports vCPU {vcpu_id} plugged, but QEMU shows no "
                              f"/machine/peripheral/vcpu{vcpu_id}", "report it with domain.xml")
        return PluggedVcpu(vcpu_id, slot, method, t_wall, call_seconds)

    def wait_ost(self, plugged: PluggedVcpu, timeout: float,
                 tick: Callable[[], None] | None = None) -> OstEvent | None:
        """The guest's _OST answer for this add, or None if the guest never evaluated _OST."""
        def match(e: Event) -> bool:
            return isinstance(e, OstEvent) and e.vcpu_id == plugged.libvirt_id

        def tick_and_check() -> None:
            self.check_alive()
            if tick is not None:
                tick()

        event = self.events.log.wait_for(match, timeout, tick_and_check)
        return event if isinstance(event, OstEvent) else None

    # --- artifacts -----------------------------------------------------------------------

    def screenshot(self, path: Path) -> Path | None:
        """Save the guest's screen as PNG; None if QEMU has nothing to show (QemuFrozen if
        it does not answer)."""
        return self._call(lambda: self._screenshot(path), "screenshot", CALL_TIMEOUT_S)

    def answers(self, timeout: float = 5.0) -> None:
        """Raise QemuFrozen unless QEMU answers a QMP query within `timeout` s: after an add
        missed something, this tells a frozen QEMU from a guest that did not answer."""
        self.monitor("query-status", timeout=timeout)

    def _screenshot(self, path: Path) -> Path | None:
        stream = self.conn.newStream(0)
        chunks: list[bytes] = []
        try:
            mime = self.dom.screenshot(stream, 0, 0)
            while True:
                data = stream.recv(262144)
                if not data or not isinstance(data, bytes):
                    break
                chunks.append(data)
            stream.finish()
        except libvirt.libvirtError:
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
            return None
        data = b"".join(chunks)
        path.write_bytes(data if mime == "image/png" else ppm_to_png(data))
        return path


def _owned(spec: DomainSpec, scratch: Path) -> DomainSpec:
    """`spec` stamped with this process as its owner (the sweep reads it)."""
    return dataclasses.replace(spec, metadata={
        **spec.metadata, "pid": str(os.getpid()), "host": socket.gethostname(),
        "scratch": str(scratch), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })


def adapt_saved_xml(xml: str, spec: DomainSpec) -> str:
    """A save image's domain XML with this run's host-side parts from `spec`: disk/CD-ROM/NVRAM
    paths (in order), the NIC's forwards, the metadata. The serial port must be the pty that
    `Machine.resume` reads through libvirt's console stream (into `spec.serial_log`)."""
    ET.register_namespace("qemu", QEMU_NS)
    ET.register_namespace("hotadd", METADATA_NS)
    root = ET.fromstring(xml)
    saved_name = root.findtext("name")
    if saved_name != spec.name:
        raise DomainError(f"the save image holds domain {saved_name!r}, not {spec.name!r}",
                          "rename the image first (harness.host.saveimage.write_renamed)")
    if root.find("./devices/serial[@type='pty']") is None:
        raise DomainError("the save image's domain has no pty serial port to read its console "
                          "from (an older hotadd saved it)",
                          "run with --cold; 'hotadd sweep' drops such saved guests")
    for kind, paths in (("disk", [d.path for d in spec.disks]),
                        ("cdrom", [c.path for c in spec.cdroms])):
        elements = root.findall(f"./devices/disk[@device='{kind}']/source")
        if len(elements) != len(paths):
            raise DomainError(f"the save image has {len(elements)} {kind}s, the run "
                              f"{len(paths)}", "run with --cold")
        for el, path in zip(elements, paths, strict=True):
            el.set("file", str(path))
    nvram = root.find("./os/nvram")
    if nvram is not None and spec.nvram is not None:
        nvram.text = str(spec.nvram)
    cmd = root.find(f"{{{QEMU_NS}}}commandline")
    if cmd is not None:
        for arg in list(cmd):
            cmd.remove(arg)
        for value in qemu_netdev_args(spec):
            ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", value=value)
    run = root.find(f"./metadata/{{{METADATA_NS}}}run")
    if run is not None:
        run.attrib.clear()
        run.attrib.update(sorted(spec.metadata.items()))
    return ET.tostring(root, encoding="unicode")


def _saved_copy(path: Path) -> Path:
    return path.with_name(f"{path.name}.saved")


def _check_system_qemu_can_reach(conn: libvirt.virConnect, spec: DomainSpec) -> None:
    check_system_qemu_can_reach(conn.getURI(), spec.input_files())


def check_system_qemu_can_reach(uri: str, files: list[Path]) -> None:
    """Under a system libvirtd, QEMU runs as an unprivileged user (libvirt-qemu on Debian):
    libvirt relabels the files themselves, but every directory above them must be searchable
    by others. Say so before QEMU fails with a bare "Permission denied"."""
    if uri != "qemu:///system":
        return
    for path in files:
        for parent in path.resolve().parents:
            if not parent.stat().st_mode & 0o001:
                raise InputError(
                    f"{path} is under {parent}, which other users cannot search: QEMU under "
                    "qemu:///system runs as an unprivileged user and cannot open it",
                    f"let others search it (chmod o+x {parent}: search, not listing), or move "
                    "the file under a directory they can (e.g. /var/lib/hotadd; for the run "
                    "cache set HOTADD_CACHE_DIR), or use the default daemonless qemu:///embed")


def owner_alive(pid: int) -> bool:
    """Whether the process that started a run still exists on this host."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

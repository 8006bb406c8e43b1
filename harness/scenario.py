"""One hot-add run, start to verdict, as data.

spec -> connect + sweep -> guest image -> domain -> boot -> session -> load probe
-> for each add: setVcpu, wait for _OST and the probe's start + complete/failure
-> unload -> (optionally one more add, expecting silence) -> collect -> oracle + host checks
-> run directory (records.jsonl, serial.log, domain.xml, result.json, screenshot on failure).

The steps are objects so that the pytest plugin can drive them too, each in its own module:
the spec (`harness.spec`: `ScenarioSpec`), the host and guest pool (`harness.pool`:
`open_host`, `Guest`: boot, session, save/restore), one probe load (`harness.attempt`:
`Attempt`), what it observes (`harness.observation`: `AddOutcome`, `await_add`, host checks)
and the result (`harness.result`: `RunResult`, result.json). `run_scenario` here composes
them. Nothing here knows which guest OS runs: that is `harness.guests.base.GuestKind`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from harness import interrupts, paths, rundir
from harness.attempt import CLOCK_ROUND_TRIPS, Attempt
from harness.errors import HotaddError
from harness.guests.base import GuestKind, HardwareRequest
from harness.host import accel, remote, storage
from harness.host.connection import open_connection
from harness.host.domain import Accelerator, to_xml
from harness.host.machine import run_name
from harness.host.remote import check_run
from harness.host.target import LOCAL, HostTarget, is_remote_uri, target_for
from harness.observation import AddOutcome, HostCheck, await_add, host_checks
from harness.pool import Guest, Host, base_versions, open_host
from harness.progress import Progress
from harness.result import Interruption, RunResult, failure_fields, write_result
from harness.result_file import RESULT_SCHEMA
from harness.spec import NTSTATUS_ERROR_MIN, ScenarioSpec, guest_kind, spec_dict

#: The names this module held before the split, for callers that import them from here.
__all__ = [
    "CLOCK_ROUND_TRIPS", "NTSTATUS_ERROR_MIN", "RESULT_SCHEMA", "AddOutcome",
    "Attempt", "Guest", "Host", "HostCheck", "Interruption", "RunResult", "ScenarioSpec",
    "await_add", "base_versions", "default_run_dir", "failure_fields", "guest_kind",
    "host_checks", "open_host", "planned_xml", "run_scenario", "spec_dict", "write_result",
]


def default_run_dir(domain: str) -> Path:
    return Path.cwd() / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{domain}"


def run_scenario(spec: ScenarioSpec, progress: Progress | None = None,
                 kind: GuestKind | None = None) -> RunResult:
    """Run one scenario. Returns a result for pass, verdict failure, and guest crashes alike;
    raises HotaddError only for input errors found before anything started. The run directory
    always ends up with result.json. `kind` overrides the guest kind `spec.guest` names (tests
    pass a reference guest that injects a fault)."""
    progress = progress or Progress()
    domain = run_name(spec.guest)
    paths.cache_dir()  # every run needs it (guest, scratch): an unusable one is refused first
    claimed = rundir.claim(spec.run_dir or default_run_dir(domain))
    run_dir = claimed.path
    if claimed.describe():
        progress.say(str(claimed.describe()))
    kind = kind or guest_kind(spec)
    partial: list[RunResult] = []  # the attempt's result when an interrupt cut it short

    def bare(exc: HotaddError | None = None) -> RunResult:
        progress.timings["total"] = progress.elapsed()
        return RunResult(spec, run_dir, domain, None, (), (), dict(progress.timings),
                         base_versions(), **failure_fields(exc))

    try:
        result = _run(spec, kind, progress, domain, run_dir, partial)
    except HotaddError as exc:
        result = bare(exc)
    except KeyboardInterrupt as exc:  # after the teardown: result.json, then the CLI's message
        cut = Interruption.of(exc, progress)
        done = partial[0] if partial else bare()
        with interrupts.shielded():  # another Ctrl-C must not cost the result
            write_result(dataclasses.replace(done, interrupted=cut, error=cut.describe()))
        raise
    write_result(result)
    return result


def planned_xml(spec: ScenarioSpec) -> str:
    """The domain XML `run_scenario(spec)` would define (`hotadd run --print-xml`): nothing is
    built, started or written, and the image and driver need not exist. An explicit
    accelerator is taken as given (the XML for a KVM host can be printed anywhere).

    For a remote host (`--libvirt-uri qemu+ssh://...`) the XML is that host's: its libvirt
    is asked for its domain capabilities (emulator, KVM, UEFI firmware), `auto` resolves
    against it, and the guest's files are named where staging would put them there."""
    kind = guest_kind(spec)
    domain = run_name(spec.guest)
    if spec.libvirt_uri is not None and is_remote_uri(spec.libvirt_uri):
        return _planned_remote_xml(spec, kind, domain, spec.libvirt_uri)
    accelerator = (accel.kvm_status().accelerator if spec.accelerator is Accelerator.AUTO
                   else spec.accelerator)
    return to_xml(kind.planned_spec(_planned_hardware(spec, domain, accelerator, LOCAL)))


def _planned_hardware(spec: ScenarioSpec, domain: str, accelerator: Accelerator,
                      target: HostTarget) -> HardwareRequest:
    return HardwareRequest(name=domain, vcpus=spec.vcpu_plan, accelerator=accelerator,
                           run_dir=spec.run_dir or default_run_dir(domain),
                           scratch=storage.scratch_path(domain, target),
                           memory_mib=spec.memory_mib, firmware=spec.firmware, host=target)


def _planned_remote_xml(spec: ScenarioSpec, kind: GuestKind, domain: str, uri: str) -> str:
    check_run(uri)
    target = target_for(uri)
    try:
        conn = open_connection(uri)
        try:
            caps = remote.host_caps(conn)
        finally:
            conn.close()
        accelerator = (remote.resolve_accel(spec.accelerator, caps, target).accelerator
                       if spec.accelerator is Accelerator.AUTO else spec.accelerator)
        hw = _planned_hardware(spec, domain, accelerator, target)
        placed = remote.planned_placement(target, kind.planned_spec(hw), hw.scratch, caps)
        return to_xml(placed.spec, caps.emulator)
    finally:
        target.close()


def _run(spec: ScenarioSpec, kind: GuestKind, progress: Progress, domain: str,
         run_dir: Path, partial: list[RunResult]) -> RunResult:
    with progress.stage("prepare", f"{kind.os.value} guest image"):
        kind.prepare(progress)
        if spec.own_driver is not None:
            spec = dataclasses.replace(spec, own_driver=kind.check_driver(spec.own_driver))
    with open_host(spec, progress) as host, \
            Guest.start(spec, kind, host, progress, domain, run_dir) as guest:
        attempt = Attempt(guest, spec, run_dir, progress)
        try:
            guest.connect(progress)
            result = attempt.run()
        except HotaddError as exc:
            result = attempt.failed(exc)
        except KeyboardInterrupt as exc:
            partial.append(attempt.interrupted(exc))
            raise
        if not result.passed and spec.keep_on_failure and guest.running:
            guest.keep(progress)
        return result


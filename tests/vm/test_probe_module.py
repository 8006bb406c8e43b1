"""The probe module in the real reference guest, booted through the host layer (libvirt, TCG).

One guest (2 of 4 vCPUs at boot) for the module; vCPUs are hot-added through libvirt
(`Machine.hotadd`, i.e. setVcpu). Each test loads the probe, acts, unloads it and judges the
whole record stream, taken from the kernel log so `deregistered`/`unload` are included, with
the oracle's linux profile.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from harness.guests import reference
from harness.guests.reference import ProbeParams, ReferenceImage
from harness.host import storage
from harness.host.domain import DirectBoot, DomainSpec, Forward, GuestOS, Topology, VcpuPlan
from harness.host.machine import Machine, run_name
from harness.oracle import HostFacts, check
from harness.oracle import Profile as OracleProfile
from harness.records import (
    DriverEvent,
    DriverRecord,
    NotifyRecord,
    NotifyState,
    Phase,
    Record,
    parse_records,
)
from harness.transport.ssh import SshTransport

pytestmark = pytest.mark.vm

STATUS_INSUFFICIENT_RESOURCES = 0xC000009A
STATUS_IO_DEVICE_ERROR = 0xC0000185


@dataclass(frozen=True)
class Guest:
    machine: Machine
    ssh: SshTransport


@pytest.fixture(scope="module")
def guest(conn: Any, reference_image: ReferenceImage,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    image = reference_image
    name = run_name("probe-module")
    serial = tmp_path_factory.mktemp("probe-module") / "serial.log"
    spec = DomainSpec(
        name=name, vcpus=VcpuPlan(Topology(cores=4), boot=2), guest_os=GuestOS.REFERENCE,
        serial_log=serial, direct_boot=DirectBoot(image.kernel, image.initrd, image.cmdline),
        forwards=(Forward(guest_port=22),),
    )
    with Machine.start(conn, spec, storage.run_scratch(name)) as machine, \
            reference.connect(image, machine.forwarded_port(22)) as ssh:
        machine.wait_serial(re.escape(reference.READY_MARKER), 90)
        ssh.wait_ready(30, still_alive=machine.check_alive, hint=f"read {serial}")
        yield Guest(machine, ssh)


def _notify(records: list[Record]) -> list[tuple[NotifyState, Phase, int, int, int]]:
    return [(r.state, r.phase, r.nt_number, r.status, r.op_status)
            for r in records if isinstance(r, NotifyRecord)]


def _events(records: list[Record]) -> list[DriverEvent]:
    return [r.event for r in records if isinstance(r, DriverRecord)]


def _next_cpu(ssh: SshTransport) -> int:
    """The id Linux gives the next hot-added CPU: the lowest one not yet present."""
    present = reference.parse_cpu_list(ssh.read_text("/sys/devices/system/cpu/present"))
    return min(set(range(len(present) + 1)) - present)


def _unload_and_collect(g: Guest) -> list[Record]:
    """rmmod the probe; the whole record stream of this load, from the kernel log."""
    reference.unload_probe(g.ssh)
    text = reference.records_from_console(g.ssh.run("dmesg").check().stdout)
    return parse_records(text.splitlines())


def _hotadd_and_wait(g: Guest, cpu: int, *, expect_online: bool) -> None:
    g.machine.hotadd()
    line = (reference.CPU_ONLINE_LINE if expect_online
            else reference.CPU_ONLINE_FAILED_LINE).format(cpu=cpu)
    g.machine.wait_serial(f"(?m)^{re.escape(line)}\\r?$", 60)


def test_replay_at_load_then_deregistration(guest: Guest) -> None:
    online = sorted(reference.online_cpus(guest.ssh))
    reference.load_probe(guest.ssh, ProbeParams(flags=1))
    live = parse_records(reference.read_records(guest.ssh).splitlines())
    assert [r.seq for r in live] == list(range(1, len(live) + 1))
    assert _events(live) == [DriverEvent.LOAD, DriverEvent.REGISTERED]
    assert _notify(live) == (
        [(NotifyState.START, Phase.REPLAY, c, 0, 0) for c in online]
        + [(NotifyState.COMPLETE, Phase.REPLAY, c, 0, 0) for c in online])
    load = live[0]
    assert isinstance(load, DriverRecord) and load.flags == 1
    assert load.active_count == len(online)
    # A cpuhp callback has no *OperationStatus to find: the probe writes op_status_in 0.
    assert {r.op_status_in for r in live if isinstance(r, NotifyRecord)} == {0}

    records = _unload_and_collect(guest)
    assert records[:len(live)] == live
    assert _events(records)[-2:] == [DriverEvent.DEREGISTERED, DriverEvent.UNLOAD]
    assert _notify(records) == _notify(live)  # teardowns at deregistration are not notify
    verdict = check(records, OracleProfile.LINUX)
    assert verdict.passed, verdict.findings


def test_no_replay_without_add_existing(guest: Guest) -> None:
    reference.load_probe(guest.ssh, ProbeParams(flags=0))
    records = _unload_and_collect(guest)
    assert _events(records) == [DriverEvent.LOAD, DriverEvent.REGISTERED,
                                DriverEvent.DEREGISTERED, DriverEvent.UNLOAD]
    assert _notify(records) == []
    assert check(records, OracleProfile.LINUX).passed


def test_hotadd_gives_start_then_complete(guest: Guest) -> None:
    before = reference.online_cpus(guest.ssh)
    cpu = _next_cpu(guest.ssh)
    reference.load_probe(guest.ssh, ProbeParams())
    _hotadd_and_wait(guest, cpu, expect_online=True)
    assert reference.online_cpus(guest.ssh) == before | {cpu}

    records = _unload_and_collect(guest)
    hotadd = [r for r in records if isinstance(r, NotifyRecord) and r.phase is Phase.HOTADD]
    assert [(r.state, r.nt_number, r.status, r.op_status) for r in hotadd] == [
        (NotifyState.START, cpu, 0, 0), (NotifyState.COMPLETE, cpu, 0, 0)]
    assert [r.active_count for r in hotadd] == [len(before), len(before) + 1]
    assert (hotadd[0].group, hotadd[0].number, hotadd[0].irql) == (0, cpu, 0)
    verdict = check(records, OracleProfile.LINUX, HostFacts(
        adds_performed=1, adds_expected_ok=1, boot_cpus=len(before),
        guest_count=len(before) + 1))
    assert verdict.passed, verdict.findings


def test_vetoed_hotadd_gives_start_then_failure_and_stays_offline(guest: Guest) -> None:
    before = reference.online_cpus(guest.ssh)
    cpu = _next_cpu(guest.ssh)
    reference.load_probe(guest.ssh, ProbeParams(veto_cpu=cpu))
    _hotadd_and_wait(guest, cpu, expect_online=False)
    assert reference.online_cpus(guest.ssh) == before

    records = _unload_and_collect(guest)
    hotadd = [r for r in records if isinstance(r, NotifyRecord) and r.phase is Phase.HOTADD]
    assert [(r.state, r.nt_number, r.status, r.op_status) for r in hotadd] == [
        (NotifyState.START, cpu, 0, STATUS_INSUFFICIENT_RESOURCES),
        (NotifyState.FAILURE, cpu, STATUS_INSUFFICIENT_RESOURCES, 0)]
    verdict = check(records, OracleProfile.LINUX, HostFacts(
        adds_performed=1, adds_expected_ok=0, boot_cpus=len(before), guest_count=len(before)))
    assert verdict.passed, verdict.findings


def test_replay_veto_rolls_back_and_stays_loaded(guest: Guest) -> None:
    online = sorted(reference.online_cpus(guest.ssh))
    vetoed = online[1]
    reference.load_probe(guest.ssh, ProbeParams(veto_cpu=vetoed, veto_errno=5))  # EIO
    assert "hotadd_probe" in guest.ssh.run("lsmod").check().stdout
    records = _unload_and_collect(guest)
    failed = [c for c in online if c < vetoed]
    assert _notify(records) == (
        [(NotifyState.START, Phase.REPLAY, c, 0, 0) for c in failed]
        + [(NotifyState.START, Phase.REPLAY, vetoed, 0, STATUS_IO_DEVICE_ERROR)]
        + [(NotifyState.FAILURE, Phase.REPLAY, c, STATUS_IO_DEVICE_ERROR, 0) for c in failed])
    assert _events(records) == [DriverEvent.LOAD, DriverEvent.REGISTER_FAILED, DriverEvent.UNLOAD]
    register_failed = records[-2]
    assert isinstance(register_failed, DriverRecord)
    assert register_failed.status == STATUS_IO_DEVICE_ERROR
    verdict = check(records, OracleProfile.LINUX)
    assert verdict.passed, verdict.findings


def test_errno_to_ntstatus_table_matches_the_module(guest: Guest) -> None:
    """Every errno in NTSTATUS_BY_ERRNO (and one outside it) as the real module maps it."""
    errnos = [*reference.NTSTATUS_BY_ERRNO, 7]  # 7 = E2BIG: not in the table
    script = "".join(
        f"insmod {reference.GUEST_PROBE_PATH} veto_cpu=0 veto_errno={e} && "
        f"grep register_failed {reference.GUEST_RECORDS_PATH} && rmmod hotadd_probe\n"
        for e in errnos)
    out = guest.ssh.run_script("set -e\n" + script).check().stdout.splitlines()
    got = [parse_records(line.splitlines())[0] for line in out]
    assert [r.status for r in got if isinstance(r, DriverRecord)] == [
        reference.ntstatus_for_errno(e) for e in errnos]
    assert reference.ntstatus_for_errno(7) == reference.NTSTATUS_OTHER_ERRNO
    assert reference.errno_for_ntstatus(0xC000009A) == 12
    assert reference.errno_for_ntstatus(0x12345678) is None

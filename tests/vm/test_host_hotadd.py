"""The host layer against real libvirt + real QEMU (TCG) + the reference guest's real kernel:
hot-add through setVcpu and setVcpusFlags, QEMU's own view, _OST events, the guest's report,
clear errors for bad input, and nothing left behind."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from harness.errors import InputError, LibvirtUnreachable, NoFreeVcpuSlot
from harness.guests import reference
from harness.host import storage
from harness.host.connection import open_connection
from harness.host.domain import (
    Accelerator,
    DirectBoot,
    Disk,
    DomainSpec,
    Firmware,
    Forward,
    GuestOS,
    Topology,
    VcpuPlan,
)
from harness.host.events import DomainEvents, OstEvent
from harness.host.machine import HotplugMethod, Machine, run_name
from harness.host.sweep import sweep
from tests.support.processes import qemu_pids_mentioning

pytestmark = pytest.mark.vm


def reference_spec(image: reference.ReferenceImage, scratch: Path, name: str,
                   boot: int = 1) -> DomainSpec:
    return DomainSpec(
        name=name, vcpus=VcpuPlan(Topology(cores=4), boot=boot), guest_os=GuestOS.REFERENCE,
        serial_log=scratch / "serial.log", accelerator=Accelerator.TCG,
        direct_boot=DirectBoot(image.kernel, image.initrd, image.cmdline),
        forwards=(Forward(22),))


@pytest.fixture
def guest(conn: libvirt.virConnect, reference_image: reference.ReferenceImage,
          tmp_path: Path) -> Iterator[Machine]:
    """The reference guest booted with 1 of 4 vCPUs, ready (its init printed the marker)."""
    name = run_name("test-host")
    scratch = storage.run_scratch(name)
    spec = reference_spec(reference_image, tmp_path, name)
    with Machine.start(conn, spec, scratch) as machine:
        machine.wait_serial(re.escape(reference.READY_MARKER), 120)
        yield machine
    assert not qemu_pids_mentioning(f"guest={name}"), "teardown left QEMU running"
    assert not scratch.exists(), "teardown left the scratch dir"


def _assert_added(machine: Machine, plugged_ids: list[int], online_ids: list[int]) -> None:
    view = machine.qemu_view()
    assert view.present == 1 + len(plugged_ids) == view.running_cpus
    for vcpu in plugged_ids:
        slot = view.slot_of_vcpu(vcpu)
        assert slot is not None and slot.core_id == vcpu  # 1 socket x 4 cores: core == vCPU id
    osts = machine.events.log.of_type(OstEvent)
    assert [(e.vcpu_id, e.status, e.slot_type) for e in osts] == [
        (v, 0, "CPU") for v in plugged_ids], "exactly one _OST with status 0 per add"
    for cpu in online_ids:  # the guest's own report, via its hotplug helper
        machine.wait_serial(re.escape(reference.CPU_ONLINE_LINE.format(cpu=cpu)), 30)


@pytest.mark.parametrize("method", list(HotplugMethod), ids=lambda m: m.value)
def test_hot_add_two_vcpus(guest: Machine, method: HotplugMethod) -> None:
    first = guest.hotadd(method=method)
    assert guest.wait_ost(first, 30) is not None
    second = guest.hotadd(method=method)
    assert guest.wait_ost(second, 30) is not None
    assert (first.libvirt_id, second.libvirt_id) == (1, 2)
    assert first.method is method and first.slot.qom_path == "/machine/peripheral/vcpu1"
    assert guest.vcpu_states() == {0: True, 1: True, 2: True, 3: False}
    _assert_added(guest, [1, 2], online_ids=[1, 2])


def test_watchers_share_the_connection_and_each_sees_its_domain(
        conn: libvirt.virConnect, guest: Machine) -> None:
    """A process has one connection to its root, and libvirt refuses a second registration
    of an event on it: a second watcher of this domain and one of another domain come and go
    while the machine's own keeps seeing its events."""
    other = DomainEvents(conn, "hotadd-not-this-domain")
    second = DomainEvents(conn, guest.name)
    first = guest.hotadd()
    assert guest.wait_ost(first, 30) is not None
    assert second.log.wait_for(lambda e: isinstance(e, OstEvent), 30) is not None
    assert not other.log.snapshot(), "another domain's watcher saw this domain's event"
    second.close()
    other.close()
    later = guest.hotadd()
    assert guest.wait_ost(later, 30) is not None, "closing a watcher silenced the machine's"
    assert len(second.log.of_type(OstEvent)) == 1, "a closed watcher still receives events"


def test_hot_add_specific_vcpu_ids_out_of_order(guest: Machine) -> None:
    """libvirt vCPU 3 first, then 1: the guest numbers CPUs in arrival order (cpu1, cpu2)."""
    a = guest.hotadd(3)
    assert guest.wait_ost(a, 30) is not None
    b = guest.hotadd(1)
    assert guest.wait_ost(b, 30) is not None
    _assert_added(guest, [3, 1], online_ids=[1, 2])


def test_add_beyond_max_and_bad_ids_are_clear_errors(guest: Machine) -> None:
    for _ in range(3):
        guest.wait_ost(guest.hotadd(), 30)
    with pytest.raises(NoFreeVcpuSlot, match="all 4 vCPUs are online") as info:
        guest.hotadd()
    assert "raise the max vCPU count" in str(info.value)
    with pytest.raises(NoFreeVcpuSlot, match="already online"):
        guest.hotadd(2)
    with pytest.raises(InputError, match=r"out of range 0\.\.3"):
        guest.hotadd(7)


def test_monitor_refuses_commands_that_change_the_guest(guest: Machine) -> None:
    with pytest.raises(InputError, match="only query-"):
        guest.monitor("device_add", driver="qemu64-x86_64-cpu")


def test_windows_profile_domain_starts_and_takes_hot_adds(conn: libvirt.virConnect,
                                                          tmp_path: Path) -> None:
    """q35 + OVMF without Secure Boot + Hyper-V panic + 2 sockets x 4 cores, 2 boot vCPUs,
    no OS on the disk: QEMU starts it under TCG and accepts hot-adds."""
    name = run_name("test-win")
    scratch = storage.run_scratch(name)
    base = tmp_path / "base.qcow2"
    import subprocess

    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1G"], check=True)
    spec = DomainSpec(
        name=name, vcpus=VcpuPlan(Topology(sockets=2, cores=4), boot=2), guest_os=GuestOS.WINDOWS,
        serial_log=tmp_path / "serial.log", memory_mib=1024, firmware=Firmware.UEFI,
        accelerator=Accelerator.TCG, nvram=storage.nvram_copy(scratch),
        disks=(Disk(storage.overlay(base, scratch)),), forwards=(Forward(5985),))
    with Machine.start(conn, spec, scratch) as machine:
        plugged = [machine.hotadd(), machine.hotadd(6)]
        view = machine.qemu_view()
        assert view.present == 4
        assert [(p.slot.socket_id, p.slot.core_id) for p in plugged] == [(0, 2), (1, 2)]
        assert machine.state() == "running"
        assert (tmp_path / "domain.xml").read_text().count("<panic model='hyperv'") == 1
    assert not qemu_pids_mentioning(f"guest={name}")
    assert not scratch.exists() and base.exists()


def test_missing_base_image_is_an_input_error_with_nothing_left(tmp_path: Path) -> None:
    scratch = storage.run_scratch(run_name("test-missing"))
    with pytest.raises(InputError, match="does not exist") as info:
        storage.overlay(tmp_path / "nope.qcow2", scratch)
    assert "hotadd image build" in str(info.value)
    storage.remove_scratch(scratch)


def test_unreachable_uri_names_uri_and_fix() -> None:
    uri = "qemu+unix:///system?socket=/nonexistent/libvirt-sock"
    with pytest.raises(LibvirtUnreachable) as info:
        open_connection(uri)
    assert uri in str(info.value) and "libvirtd" in str(info.value)


def test_refused_start_leaves_nothing(conn: libvirt.virConnect, tmp_path: Path,
                                      reference_image: reference.ReferenceImage) -> None:
    """A domain QEMU cannot start (absurd memory) is a clear error, with no domain left."""
    from dataclasses import replace

    from harness.errors import DomainError

    name = run_name("test-refused")
    scratch = storage.run_scratch(name)
    spec = replace(reference_spec(reference_image, tmp_path, name), memory_mib=64 * 1024 * 1024)
    with pytest.raises(DomainError, match="refused to start"):
        Machine.start(conn, spec, scratch)
    assert name not in [d.name() for d in conn.listAllDomains(0)]
    assert not scratch.exists() and not qemu_pids_mentioning(f"guest={name}")


def test_sweep_removes_a_crashed_runs_domain(conn: libvirt.virConnect, tmp_path: Path,
                                             reference_image: reference.ReferenceImage) -> None:
    """A run whose owner died (here: a pid that cannot exist) is destroyed with its scratch."""
    from dataclasses import replace

    name = run_name("test-sweep")
    scratch = storage.run_scratch(name)
    (scratch / storage.OWNER_FILE).write_text("999999999")
    spec = reference_spec(reference_image, tmp_path, name)
    machine = Machine.start(conn, replace(spec), scratch)
    # Pretend the owner died: rewrite the domain's metadata pid.
    from harness.host.domain import METADATA_NS

    xml = machine.dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS, 0)
    xml = re.sub(r'pid="\d+"', 'pid="999999999"', xml)
    machine.dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, xml, "hotadd", METADATA_NS,
                            libvirt.VIR_DOMAIN_AFFECT_LIVE)
    report = sweep(conn)
    assert name in report.removed_domains and name in report.removed_scratch
    assert name not in [d.name() for d in conn.listAllDomains(0)]
    assert not qemu_pids_mentioning(f"guest={name}") and not scratch.exists()
    machine.close()  # already gone: must not raise


def test_guest_panic_is_reported_as_a_crash(guest: Machine,
                                            reference_image: reference.ReferenceImage,
                                            tmp_path: Path) -> None:
    """A guest kernel panic arrives as pvpanic's GUEST_PANICKED: the domain is kept (on_crash
    preserve), check_alive() raises GuestCrashed naming the serial log, and a screenshot of the
    dead guest can still be taken."""
    from harness.errors import GuestCrashed
    from harness.host.events import PanicEvent

    with reference.connect(reference_image, guest.forwarded_port(22)) as ssh:
        ssh.wait_ready(60)
        ssh.run("(sleep 0.2; echo c > /proc/sysrq-trigger) >/dev/null 2>&1 &").check()
    event = guest.events.log.wait_for(lambda e: isinstance(e, PanicEvent), 60)
    assert isinstance(event, PanicEvent)
    with pytest.raises(GuestCrashed, match="crashed: guest panic") as info:
        guest.check_alive()
    assert str(guest.spec.serial_log) in str(info.value)
    with pytest.raises(GuestCrashed):
        guest.hotadd()
    shot = guest.screenshot(tmp_path / "crash.png")
    assert shot is not None and shot.read_bytes().startswith(b"\x89PNG")


_REOPEN_SCRIPT = """
import sys
from harness.errors import LibvirtUnreachable
from harness.host.connection import open_connection
uri, other = sys.argv[1], sys.argv[2]
for _ in range(40):  # libvirt's driver table holds about 16 registrations of the QEMU driver
    conn = open_connection(uri)
    assert conn.getLibVersion() > 0
    conn.close()
try:
    open_connection(other)
except LibvirtUnreachable as exc:
    print("REFUSED", exc.message)
print("REOPENED", bool(open_connection(uri).isAlive()))
"""


def test_a_process_reopens_its_embedded_root_any_number_of_times() -> None:
    """Every libvirt open of an embed URI registers the QEMU driver again, and the table is
    small: a run, a matrix worker or a pytest session opening the root per scenario must keep
    working past it; another root is refused without spending a slot."""
    import subprocess
    import sys

    from tests.support.processes import short_root

    with short_root() as root, short_root() as other:
        done = subprocess.run(
            [sys.executable, "-c", _REOPEN_SCRIPT, f"qemu:///embed?root={root}",
             f"qemu:///embed?root={other}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"already runs the embedded QEMU driver at {root}" in done.stdout
    assert "REOPENED True" in done.stdout

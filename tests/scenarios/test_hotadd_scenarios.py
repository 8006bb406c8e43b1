"""The hot-add scenarios hotadd ships for users.

Written against the pytest plugin's fixtures only (`hotadd`, `hotadd_probe`, `hotadd_guest`),
so they run unchanged on the reference guest (here, in CI) and on Windows in a lab:

    pytest tests/scenarios --junitxml=hotadd.xml --hotadd-artifacts=artifacts
    pytest tests/scenarios --hotadd-guest windows --hotadd-image IMAGE --hotadd-max-vcpus 8

Processor indices are the guest's (Windows NtNumber, Linux CPU id): the boot processors are
0..boot-1 and hot-added ones get the next free index, on both.
"""

from __future__ import annotations

import pytest

from harness.pool import Guest
from harness.pytest_plugin import HotaddHelper, LoadedProbe
from harness.records import DriverEvent, DriverRecord, Phase


def test_single_add(hotadd: HotaddHelper, hotadd_guest: Guest) -> None:
    result = hotadd.run(adds=1)
    assert result.passed, hotadd.explain(result)
    [add] = result.adds
    assert add.end_state == "complete" and add.guest_index == hotadd.boot_vcpus
    assert hotadd_guest.processor_count() == hotadd.boot_vcpus + 1


@pytest.mark.hotadd_vcpus(free=2)
def test_several_adds_in_a_row(hotadd: HotaddHelper) -> None:
    result = hotadd.run(adds=2)
    assert result.passed, hotadd.explain(result)
    assert [a.end_state for a in result.adds] == ["complete", "complete"]
    boot = hotadd.boot_vcpus
    assert [a.guest_index for a in result.adds] == [boot, boot + 1]


def test_add_up_to_max(hotadd: HotaddHelper, hotadd_guest: Guest) -> None:
    """Every free slot, one at a time; then the host has none left to give."""
    result = hotadd.run(adds=hotadd.free_vcpus)
    assert result.passed, hotadd.explain(result)
    assert all(a.end_state == "complete" for a in result.adds)
    assert hotadd_guest.processor_count() == hotadd.max_vcpus
    assert hotadd_guest.free_slots() == []


@pytest.mark.hotadd_vcpus(free=2)
def test_veto_on_hot_add(hotadd: HotaddHelper, hotadd_guest: Guest) -> None:
    """The probe vetoes the second hot-added processor in its Start: that add ends in
    Failure, the processor stays offline, and the verdict passes (the failure path behaved)."""
    vetoed = hotadd.boot_vcpus + 1
    result = hotadd.run(adds=2, veto_index=vetoed)
    assert result.passed, hotadd.explain(result)
    assert [(a.guest_index, a.end_state) for a in result.adds] == [
        (hotadd.boot_vcpus, "complete"), (vetoed, "failure")]
    assert hotadd_guest.processor_count() == hotadd.boot_vcpus + 1


def test_veto_during_replay(hotadd: HotaddHelper, hotadd_guest: Guest) -> None:
    """Vetoing a boot processor's replay Start fails the registration: no callback is left
    registered, so nothing is hot-added, and the guest keeps its boot processors."""
    vetoed = hotadd.boot_vcpus - 1
    result = hotadd.run(adds=0, veto_index=vetoed)
    assert result.passed, hotadd.explain(result)
    events = [r.event for r in hotadd.records(result) if isinstance(r, DriverRecord)]
    assert DriverEvent.REGISTER_FAILED in events and DriverEvent.REGISTERED not in events
    assert result.verdict is not None
    [open_start] = [t for t in result.verdict.timeline if t.end_state is None]
    assert (open_start.phase, open_start.nt_number) == (Phase.REPLAY, vetoed)
    assert hotadd_guest.processor_count() == hotadd.boot_vcpus


@pytest.mark.hotadd_vcpus(free=2)
def test_unload_then_add(hotadd_probe: LoadedProbe, hotadd: HotaddHelper,
                         hotadd_guest: Guest) -> None:
    """After deregistration the probe must see nothing, while the guest still takes the CPU."""
    assert hotadd_probe.add().end_state == "complete"
    hotadd_probe.unload()
    hotadd_probe.add_after_unload()
    result = hotadd_probe.finish()
    assert result.passed, hotadd.explain(result)
    assert [r.phase for r in hotadd.notifies(result)].count(Phase.HOTADD) == 2  # 1 add only
    assert hotadd_guest.processor_count() == hotadd.boot_vcpus + 2


@pytest.mark.hotadd_vcpus(free=2)
def test_load_during_adds(hotadd: HotaddHelper, hotadd_guest: Guest) -> None:
    """Both adds plugged, then the probe loaded while the guest brings them online: each add
    is seen once, in the replay or as a hot-add (`result.load_window` says which)."""
    result = hotadd.run(adds=2, load_during_adds=True)
    assert result.passed, hotadd.explain(result)
    window = result.load_window
    assert window is not None
    assert window.replayed + window.hotadd_in_window + window.hotadd_after == 2
    assert hotadd_guest.processor_count() == hotadd.boot_vcpus + 2

"""Properties of topology validation and the vCPU id -> socket/die/core/thread/APIC ID mapping
(no VM). QEMU's own answer for real topologies is checked in tests/vm/test_topology_matrix.py;
here the pure functions are checked against QEMU's documented layout: CPU indexes run
thread-fastest (x86_topo_ids_from_idx()), and each level of the APIC ID gets ceil(log2(count))
bits (x86_apicid_from_topo_ids()), both in QEMU's include/hw/i386/topology.h,
https://gitlab.com/qemu-project/qemu/-/blob/v7.2.0/include/hw/i386/topology.h.

Deterministic (derandomize=True) so CI sees the same examples every run.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import InputError
from harness.guests import reference
from harness.host.domain import MAX_APIC_ID, MAX_VCPUS, TopoIds, Topology, VcpuPlan
from harness.host.machine import HotplugMethod
from harness.spec import ScenarioSpec

COUNT = st.integers(min_value=1, max_value=9)
TOPOLOGIES = st.builds(Topology, sockets=COUNT, dies=st.integers(1, 4), cores=COUNT,
                       threads=st.integers(1, 4)).filter(lambda t: t.total <= 400)
SETTINGS = settings(derandomize=True, max_examples=300, deadline=None)


def _bits(count: int) -> int:
    """ceil(log2(count)), written differently from the code under test."""
    return 0 if count == 1 else math.ceil(math.log2(count))


@SETTINGS
@given(TOPOLOGIES)
def test_indexes_enumerate_the_topology_thread_fastest(t: Topology) -> None:
    expected = [TopoIds(s, d, c, th) for s, d, c, th in itertools.product(
        range(t.sockets), range(t.dies), range(t.cores), range(t.threads))]
    assert [t.slot(i) for i in range(t.total)] == expected


@SETTINGS
@given(TOPOLOGIES)
def test_apic_ids_pack_each_level_into_power_of_two_fields(t: Topology) -> None:
    thread_bits, core_bits, die_bits = _bits(t.threads), _bits(t.cores), _bits(t.dies)
    ids = [t.apic_id(i) for i in range(t.total)]
    for i, apic in enumerate(ids):
        s = t.slot(i)
        assert apic == (s.socket * 2 ** (die_bits + core_bits + thread_bits)
                        + s.die * 2 ** (core_bits + thread_bits) + s.core * 2 ** thread_bits
                        + s.thread)
    assert ids == sorted(set(ids)), "APIC IDs are distinct and rise with the vCPU index"
    assert t.max_apic_id == ids[-1]
    # A level leaves unused APIC IDs when its count is not a power of two and a level above
    # it has more than one member.
    above = {"threads": t.sockets * t.dies * t.cores, "cores": t.sockets * t.dies,
             "dies": t.sockets}
    holes = any(getattr(t, level) & (getattr(t, level) - 1) and n > 1
                for level, n in above.items())
    assert (ids != list(range(t.total))) == holes


@SETTINGS
@given(TOPOLOGIES, st.integers(min_value=1, max_value=400))
def test_a_plan_is_accepted_exactly_when_qemu_and_the_guest_can_run_it(t: Topology,
                                                                       boot: int) -> None:
    ok = boot <= t.total <= MAX_VCPUS and t.max_apic_id <= MAX_APIC_ID
    if ok:
        plan = VcpuPlan(t, boot=boot)
        assert plan.hotpluggable == t.total - boot
    else:
        with pytest.raises(InputError) as err:
            VcpuPlan(t, boot=boot)
        assert err.value.fix


@SETTINGS
@given(TOPOLOGIES.filter(lambda t: t.total >= 2 and t.max_apic_id <= MAX_APIC_ID
                         and t.total <= MAX_VCPUS), st.data())
def test_scenario_vcpu_ids_must_be_distinct_hotpluggable_ids(t: Topology,
                                                            data: st.DataObject) -> None:
    boot = data.draw(st.integers(1, t.total - 1))
    ids = data.draw(st.lists(st.integers(-2, t.total + 2), min_size=1, max_size=6))
    valid = len(set(ids)) == len(ids) and all(boot <= i < t.total for i in ids)
    if valid:
        spec = ScenarioSpec(topology=t, boot_vcpus=boot, adds=len(ids), vcpu_ids=tuple(ids))
        assert spec.vcpu_ids == tuple(ids)
    else:
        with pytest.raises(InputError):
            ScenarioSpec(topology=t, boot_vcpus=boot, adds=len(ids), vcpu_ids=tuple(ids))


@SETTINGS
@given(st.lists(st.integers(2, 7), min_size=2, max_size=6, unique=True))
def test_set_vcpus_flags_takes_ids_only_in_ascending_order(ids: list[int]) -> None:
    t = Topology(sockets=2, cores=2, threads=2)
    if ids == sorted(ids):
        ScenarioSpec(topology=t, adds=len(ids), vcpu_ids=tuple(ids),
                     method=HotplugMethod.SET_VCPUS)
    else:
        with pytest.raises(InputError, match="setVcpusFlags"):
            ScenarioSpec(topology=t, adds=len(ids), vcpu_ids=tuple(ids),
                         method=HotplugMethod.SET_VCPUS)


def test_out_of_range_slot_is_an_input_error() -> None:
    with pytest.raises(InputError, match="not in topology"):
        Topology(sockets=2, cores=2).slot(4)


@SETTINGS
@given(st.integers(min_value=1, max_value=MAX_VCPUS))
def test_reference_guest_always_counts_more_than_8_possible_cpus(max_vcpus: int) -> None:
    """Linux picks logical flat IPIs with <= 8 possible CPUs, which QEMU 7.2's TCG APIC loses
    beyond an APIC ID hole (vm/reference/README.md); possible_cpus must also cover every vCPU."""
    line = reference.kernel_cmdline("console=ttyS0", max_vcpus)
    assert line.startswith("console=ttyS0 ")
    values = [int(w.split("=", 1)[1]) for w in line.split() if w.startswith("possible_cpus=")]
    assert len(values) == 1 and values[0] > 8 and values[0] >= max_vcpus
    lpj = [int(w.split("=", 1)[1]) for w in line.split() if w.startswith("lpj=")]
    assert lpj == [reference.PRESET_LPJ], "hot-added CPUs skip delay-loop calibration"


QEMU_CAPTURE = json.loads((Path(__file__).parents[1] / "data"
                           / "qemu72_hotpluggable_cpus.json").read_text())


@pytest.mark.parametrize("key", sorted(QEMU_CAPTURE["topologies"]))
def test_slots_match_what_qemu_reported(key: str) -> None:
    """QEMU lists query-hotpluggable-cpus from the last CPU index to the first (libvirt
    reverses it the same way to number its vCPUs)."""
    t = Topology(*map(int, key.split(",")))
    reported = [TopoIds(s, d or 0, c, th)
                for s, d, c, th in reversed(QEMU_CAPTURE["topologies"][key])]
    assert [t.slot(i) for i in range(t.total)] == reported

"""A bounded topology matrix on the reference guest: real runs covering dies, SMT threads,
several sockets, adds into the last socket, descending and interleaved orders, a count that is
not a power of two (holes in the APIC IDs) and one topology above 64 vCPUs with adds above
index 64. Every run must pass, every add complete, and QEMU must have plugged each vCPU where
`Topology.slot()` says. Boot vCPUs stay small: TCG on 2 shared cores.

Each of these orders hung Linux 6.1 under TCG before the reference guest got possible_cpus
(lost logical-mode IPIs beyond an APIC ID hole: vm/reference/README.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.host.domain import Accelerator, Topology
from harness.progress import Progress
from harness.scenario import run_scenario
from harness.spec import ScenarioSpec

pytestmark = pytest.mark.vm

MATRIX = [
    # topology, boot vCPUs, vCPU ids in add order
    pytest.param(Topology(sockets=2, cores=2, threads=2), 2, (7, 5, 6, 4),
                 id="2s-2c-2t-descending-into-last-socket"),
    pytest.param(Topology(sockets=1, dies=2, cores=2, threads=1), 1, (3, 1, 2),
                 id="2dies-interleaved"),
    pytest.param(Topology(sockets=2, cores=3, threads=1), 1, (4, 1, 5),
                 id="2s-3c-apic-id-hole-interleaved"),
    pytest.param(Topology(sockets=4, cores=1, threads=2), 2, (7, 4, 6),
                 id="4s-smt-last-socket-first"),
    pytest.param(Topology(sockets=2, dies=2, cores=2, threads=2), 2, (15, 9, 3),
                 id="2s-2d-2c-2t-descending"),
    pytest.param(Topology(sockets=2, cores=20, threads=2), 2, (79, 65, 70),
                 id="80-vcpus-adds-above-64"),
]


@pytest.mark.parametrize(("topology", "boot", "ids"), MATRIX)
def test_every_topology_and_order_passes(tmp_path: Path, topology: Topology, boot: int,
                                         ids: tuple[int, ...]) -> None:
    spec = ScenarioSpec(topology=topology, boot_vcpus=boot, adds=len(ids), vcpu_ids=ids,
                        accelerator=Accelerator.TCG, run_dir=tmp_path / "run")
    result = run_scenario(spec, Progress(quiet=True))

    assert result.passed, result.error or result.verdict
    assert [a.end_state for a in result.adds] == ["complete"] * len(ids)
    assert [a.guest_index for a in result.adds] == list(range(boot, boot + len(ids))), (
        "Linux numbers hot-added CPUs in arrival order")
    for add in result.adds:
        slot = add.plugged.slot
        qemu = (slot.socket_id, slot.die_id, slot.core_id, slot.thread_id)
        expected = topology.slot(add.plugged.libvirt_id)
        assert qemu == (expected.socket, expected.die, expected.core, expected.thread), (
            f"vCPU {add.plugged.libvirt_id}")

"""The oracle accepts what the KMDF probe's formatter writes for a modelled run.

The oracle's protocol model (harness.oracle.model) says which notifications a correct probe
sees. Each modelled notification goes through the driver's own code, compiled with the host gcc
under ASan/UBSan: its veto policy decides op_status from the Parameters that would produce the
modelled veto (the model's op_status is not passed in), then the ring and the formatter write
the line, drained while the ring fills as the worker does. The lines must parse with
harness.records, equal the model's records field for field, and pass harness.oracle.check
without a single finding.
"""

from __future__ import annotations

import pytest

from harness.oracle import Profile, check
from harness.oracle.model import (
    APC_LEVEL,
    STATUS_INSUFFICIENT_RESOURCES,
    STATUS_UNSUCCESSFUL,
    HotAdd,
    ProtocolModel,
)
from harness.records import DriverRecord, NotifyRecord, NotifyState, Phase, Record, parse_records
from tests.support.driver_toolchain import (
    NO_VETO,
    RingHarness,
    VetoPolicy,
    build_ring_harness,
    parse_lines,
    spec,
)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> RingHarness:
    return build_ring_harness(tmp_path_factory.mktemp("driver-oracle"))


def _as_spec(record: Record) -> str:
    """The ring_harness input that makes the driver's code produce this record."""
    if isinstance(record, DriverRecord):
        fields = {"t": record.t_ns, "event": record.event.value}
        for name, key in (("active_count", "active"), ("flags", "flags"), ("status", "status")):
            value = getattr(record, name)
            if value is not None:
                fields[key] = value
        return spec("driver", **fields)
    # What the kernel hands the callback; op_status is the driver's decision, not an input.
    # The probe also records its own KeGetProcessorNumberFromIndex lookup: here it agrees.
    return spec("notify", t=record.t_ns, state=record.state.value, phase=record.phase.value,
                nt=record.nt_number, group=record.group, number=record.number,
                status=record.status, active=record.active_count, irql=record.irql,
                map_status=0, map_group=record.group, map_number=record.number)


def _parameters_for(model: ProtocolModel) -> VetoPolicy:
    """The service Parameters under which the driver vetoes what the model vetoes."""
    vetoed = [r for r in model.records() if isinstance(r, NotifyRecord)
              and r.state is NotifyState.START and r.op_status != 0]
    assert len(vetoed) <= 1, "the driver vetoes at most one Start per load"
    if not vetoed:
        return VetoPolicy(index=NO_VETO, status=STATUS_INSUFFICIENT_RESOURCES)
    return VetoPolicy(index=vetoed[0].nt_number, status=vetoed[0].op_status,
                      during_replay=vetoed[0].phase is Phase.REPLAY)


MODELS = {
    "hotadds-complete-veto-fail": ProtocolModel(
        existing=4, replay_irql=APC_LEVEL,
        hotadds=(HotAdd(), HotAdd(veto=STATUS_INSUFFICIENT_RESOURCES),
                 HotAdd(failure=STATUS_UNSUCCESSFUL), HotAdd())),
    "replay-veto": ProtocolModel(existing=4, replay_irql=APC_LEVEL, replay_veto_at=2,
                                 deregister=False),
    "replay-veto-first": ProtocolModel(existing=3, replay_veto_at=0, deregister=False),
    # The vetoed add leaves index 2 free; the retry gets it and the one-shot veto lets it in.
    "veto-then-retry": ProtocolModel(
        existing=2, hotadds=(HotAdd(veto=STATUS_UNSUCCESSFUL), HotAdd(), HotAdd())),
    "no-add-existing": ProtocolModel(existing=2, add_existing=False, hotadds=(HotAdd(),)),
    "two-groups": ProtocolModel(existing=70, replay_irql=APC_LEVEL,
                                hotadds=(HotAdd(), HotAdd())),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_oracle_passes_the_driver_formatted_trace_of_a_modelled_run(
        harness: RingHarness, name: str) -> None:
    model = MODELS[name]
    expected = model.records()
    # A ring of 256 drained every 5 appends: the replay of 70 processors wraps it.
    output = harness.records([_as_spec(r) for r in expected], capacity=256, drain_every=5,
                             veto=_parameters_for(model))
    parse_lines(output)  # valid JSON, within HAP_MAX_LINE
    records = parse_records(output.splitlines())
    assert records == expected  # field for field, seq included (extras are not compared)
    assert all(r.extra == {"map_status": 0, "map_group": r.group, "map_number": r.number}
               for r in records if not isinstance(r, DriverRecord))
    verdict = check(records, Profile.WINDOWS, model.host_facts())
    assert verdict.passed, verdict.findings
    assert verdict.findings == ()

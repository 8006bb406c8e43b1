"""The oracle on what the KMDF probe writes when its record ring overflows.

Modelled runs go through the driver's own ring and formatter (driver/recorder/probe_ring.c,
probe_format.c, built with the host gcc by driver_toolchain) with a ring too small for them.
The output must read without an input error, equal `harness.oracle.model.lost` applied to the
records the `dropped` lines say were lost (so the model's loss is the driver's), and fail
`records.none_dropped` with the right counts, never as seq or time damage.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from test_driver_oracle import MODELS, _as_spec, _parameters_for

from harness.oracle import Profile, Severity, check, render_verdict
from harness.oracle.checks import MAX_REPORTS_PER_RULE
from harness.oracle.model import lost
from harness.records import DriverEvent, DriverRecord, Record, parse_records
from tests.support.driver_toolchain import RingHarness, build_ring_harness

# Drained after every 3rd append, a 2-slot ring loses every 3rd append.
CAPACITY, DRAIN_EVERY = 2, 3


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> RingHarness:
    return build_ring_harness(tmp_path_factory.mktemp("driver-overflow"))


def _losses(written: Sequence[Record]) -> list[tuple[int, int]]:
    """The runs [start, stop) of the appended records that the `dropped` lines report."""
    runs: list[tuple[int, int]] = []
    at = 0
    for record in written:
        if isinstance(record, DriverRecord) and record.event is DriverEvent.DROPPED:
            assert record.count is not None
            runs.append((at, at + record.count))
            at += record.count
        else:
            at += 1
    return runs


@pytest.mark.parametrize("name", list(MODELS))
def test_an_overflowed_driver_trace_fails_only_as_a_loss(harness: RingHarness,
                                                         name: str) -> None:
    model = MODELS[name]
    appended = model.records()
    output = harness.records([_as_spec(r) for r in appended], capacity=CAPACITY,
                             drain_every=DRAIN_EVERY, veto=_parameters_for(model))
    written = parse_records(output.splitlines())  # `dropped` is no input error
    runs = _losses(written)
    assert runs, "the ring was meant to overflow"
    assert runs[-1][1] <= len(appended)

    expected = list(appended)
    for start, stop in reversed(runs):
        expected = lost(expected, start, stop)
    assert written == expected  # field for field: seq, t_ns and count included

    verdict = check(written, Profile.WINDOWS, model.host_facts())
    losses = [f for f in verdict.findings if f.rule_id == "records.none_dropped"]
    assert [f.seqs for f in losses] == [
        (r.seq,) for r in written if isinstance(r, DriverRecord)
        and r.event is DriverEvent.DROPPED][:MAX_REPORTS_PER_RULE]
    assert {f.severity for f in losses} == {Severity.FAIL} and not verdict.passed
    total = sum(stop - start for start, stop in runs)
    in_all = f"({total} in all, in {len(runs)} places)" if len(runs) > 1 else "in all"
    assert all((in_all in f.message) == (len(runs) > 1) for f in losses)
    rules = {f.rule_id for f in verdict.findings}
    assert not rules & {"seq.complete", "seq.first_load", "time.monotonic"}, \
        render_verdict(verdict)

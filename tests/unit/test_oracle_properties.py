"""Properties: every trace the protocol model writes passes; every single mutation fails.

Deterministic (derandomize=True): CI sees the same examples on every run. Each property runs a
bounded number of examples; the whole file takes a few seconds on 2 cores.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from harness.oracle import RULES_BY_ID, Profile, Severity, check, render_verdict
from harness.oracle.model import (
    ENOMEM_AS_STATUS,
    STATUS_INSUFFICIENT_RESOURCES,
    STATUS_UNSUCCESSFUL,
    HotAdd,
    ProtocolModel,
    edited,
    lost,
    renumber,
)
from harness.records import (
    DriverEvent,
    DriverRecord,
    NotifyRecord,
    NotifyState,
    Phase,
    Record,
    dump_records,
    parse_records,
)

ERRORS = st.sampled_from([STATUS_INSUFFICIENT_RESOURCES, STATUS_UNSUCCESSFUL, 0xC00000BB,
                          0x8000_0005, ENOMEM_AS_STATUS])
LATENCY = st.integers(min_value=0, max_value=10**9)
HOTADDS = st.one_of(
    st.builds(HotAdd, latency_ns=LATENCY),
    st.builds(HotAdd, veto=ERRORS, latency_ns=LATENCY),
    st.builds(HotAdd, failure=ERRORS, latency_ns=LATENCY),
)
DETERMINISTIC = settings(derandomize=True, deadline=None, max_examples=300,
                         suppress_health_check=[HealthCheck.too_slow])


@st.composite
def models(draw: st.DrawFn, *, veto_failure_optional: bool = False) -> ProtocolModel:
    """Any run the protocol allows (veto_failure_optional: Windows may not tell the vetoer)."""
    profile = draw(st.sampled_from(Profile))
    windows = profile is Profile.WINDOWS
    existing = draw(st.integers(min_value=1, max_value=8))
    add_existing = draw(st.booleans())
    veto_at = draw(st.none() | st.integers(0, existing - 1)) if add_existing else None
    if veto_at is not None:
        hotadds: tuple[HotAdd, ...] = ()
        deregister = False
        unload = draw(st.booleans())
    else:
        hotadds = tuple(draw(st.lists(HOTADDS, max_size=6)))
        deregister = draw(st.booleans())
        unload = deregister and draw(st.booleans())
    model = ProtocolModel(
        existing=existing, add_existing=add_existing, replay_veto_at=veto_at,
        replay_veto_status=draw(ERRORS), hotadds=hotadds, deregister=deregister, unload=unload,
        profile=profile,
        veto_failure_delivered=draw(st.booleans()) if windows and veto_failure_optional else True,
        replay_irql=draw(st.sampled_from([0, 1])) if windows else 0,
        group_size=draw(st.sampled_from([64, 4, 1])) if windows else 64,
        step_ns=draw(st.integers(min_value=1, max_value=10**6)),
    )
    # --load-during-adds: some adds in flight at load, the first completing ones replayed, a
    # later one in the registration window (drawn last: the draws above keep their examples)
    during = draw(st.integers(0, len(hotadds))) if add_existing else 0
    leading = next((i for i, a in enumerate(hotadds) if not a.completes), len(hotadds))
    replayed = draw(st.integers(0, min(during, leading)))
    return replace(model, adds_during_load=during, replayed_adds=replayed,
                   hotadds_in_window=draw(st.integers(0, len(hotadds) - replayed)))


def failing_rules(records: list[Record], model: ProtocolModel) -> set[str]:
    verdict = check(records, model.profile, model.host_facts())
    fails = {f.rule_id for f in verdict.findings if f.severity is Severity.FAIL}
    assert verdict.passed == (not fails)
    return fails


@DETERMINISTIC
@given(models(veto_failure_optional=True))
def test_modelled_traces_pass(model: ProtocolModel) -> None:
    records = model.records()
    verdict = check(records, model.profile, model.host_facts())
    assert verdict.passed, render_verdict(verdict)
    allowed = set() if model.veto_failure_delivered else {"hotadd.veto_failure"}
    assert {f.rule_id for f in verdict.findings} <= allowed, render_verdict(verdict)
    assert len(verdict.timeline) == sum(
        isinstance(r, NotifyRecord) and r.state is NotifyState.START for r in records)


@DETERMINISTIC
@given(models(veto_failure_optional=True))
def test_modelled_traces_survive_a_round_trip(model: ProtocolModel) -> None:
    records = model.records()
    assert parse_records(dump_records(records).splitlines()) == records


# Raw mutations keep each record's own seq, as a damaged file or a broken probe would.

@DETERMINISTIC
@given(models(), st.data())
def test_dropping_a_record_fails(model: ProtocolModel, data: st.DataObject) -> None:
    records = model.records()
    i = data.draw(st.integers(0, len(records) - 2), label="dropped")  # not the last: see below
    assert "seq.complete" in failing_rules(records[:i] + records[i + 1:], model)


@DETERMINISTIC
@given(models(), st.data())
def test_duplicating_a_record_fails(model: ProtocolModel, data: st.DataObject) -> None:
    records = model.records()
    i = data.draw(st.integers(0, len(records) - 1), label="duplicated")
    assert "seq.complete" in failing_rules(records[:i + 1] + records[i:], model)


@DETERMINISTIC
@given(models(), st.data())
def test_swapping_two_records_fails(model: ProtocolModel, data: st.DataObject) -> None:
    records = model.records()
    i = data.draw(st.integers(0, len(records) - 2), label="first")
    j = data.draw(st.integers(i + 1, len(records) - 1), label="second")
    swapped = list(records)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    assert "seq.complete" in failing_rules(swapped, model)


def _some_notify(records: list[Record], data: st.DataObject) -> tuple[int, NotifyRecord]:
    notifies = [i for i, r in enumerate(records) if isinstance(r, NotifyRecord)]
    assume(notifies)
    i = data.draw(st.sampled_from(notifies), label="changed")
    record = records[i]
    assert isinstance(record, NotifyRecord)
    return i, record


def _nt_rule(record: NotifyRecord, replay_vetoed: bool) -> str | None:
    """Which rule a changed nt_number must break, by the record's role (None: no promise)."""
    if record.phase is Phase.HOTADD:
        return "hotadd.pair"  # its partner is now an orphan, or it is
    if record.state is NotifyState.COMPLETE:
        return "replay.completes"
    if record.state is NotifyState.FAILURE:
        return "replay.veto_failures"
    # A replay Start: without a veto the Starts must cover 0..N-1 exactly. The vetoed replay's
    # Starts may legitimately stop anywhere, so a renamed one is not always wrong.
    return None if replay_vetoed else "replay.starts"


@DETERMINISTIC
@given(models(), st.data())
def test_changing_an_nt_number_fails(model: ProtocolModel, data: st.DataObject) -> None:
    records = model.records()
    i, record = _some_notify(records, data)
    rule = _nt_rule(record, model.replay_veto_at is not None)
    assume(rule is not None)
    new = data.draw(st.integers(0, model.existing + len(model.hotadds) + 2).filter(
        lambda n: n != record.nt_number), label="new nt_number")
    assert rule in failing_rules(edited(records, i, nt_number=new), model)


@DETERMINISTIC
@given(models(), st.data())
def test_a_failure_with_a_success_status_fails(model: ProtocolModel,
                                               data: st.DataObject) -> None:
    records = model.records()
    i, record = _some_notify(records, data)
    assume(record.state is NotifyState.FAILURE)
    status = data.draw(st.sampled_from([0, 0x0000_0103, 0x4000_0000]), label="status")
    assert "status.failure_error" in failing_rules(edited(records, i, status=status), model)


@DETERMINISTIC
@given(models(), st.data())
def test_a_start_or_complete_with_a_status_is_reported(model: ProtocolModel,
                                                       data: st.DataObject) -> None:
    """Status 0 on Start/Complete is open on Windows (a warning), the Linux probe's promise."""
    records = model.records()
    i, record = _some_notify(records, data)
    assume(record.state is not NotifyState.FAILURE)
    changed = edited(records, i, status=data.draw(ERRORS, label="status"))
    verdict = check(changed, model.profile, model.host_facts())
    severity = RULES_BY_ID["status.success_zero"].severity_in(model.profile)
    assert [(f.rule_id, f.severity) for f in verdict.findings] == [
        ("status.success_zero", severity)]
    assert verdict.passed == (severity is Severity.WARN)


@DETERMINISTIC
@given(models(), st.data())
def test_a_notify_after_the_end_fails(model: ProtocolModel, data: st.DataObject) -> None:
    records = model.records()
    ends = [i for i, r in enumerate(records) if isinstance(r, DriverRecord) and r.event in (
        DriverEvent.DEREGISTERED, DriverEvent.UNLOAD, DriverEvent.REGISTER_FAILED)]
    assume(ends)
    end = data.draw(st.sampled_from(ends), label="after")
    nt = data.draw(st.integers(0, model.existing + 2), label="nt_number")
    state = data.draw(st.sampled_from(NotifyState), label="state")
    late = NotifyRecord(seq=0, t_ns=records[end].t_ns, state=state, phase=Phase.HOTADD,
                        nt_number=nt, group=0, number=nt, status=0, op_status=0,
                        active_count=records[end].active_count or model.existing, irql=0)
    injected = renumber([*records[:end + 1], late, *records[end + 1:]])
    assert "notify.after_end" in failing_rules(injected, model)


@DETERMINISTIC
@given(models(), st.data())
def test_losing_records_as_the_driver_does_fails_as_a_loss_not_as_damage(
        model: ProtocolModel, data: st.DataObject) -> None:
    """A full ring: one `dropped` line with its own seq replaces any run of records but load."""
    records = model.records()
    start = data.draw(st.integers(1, len(records) - 1), label="first lost")
    stop = data.draw(st.integers(start + 1, len(records)), label="end of loss")
    verdict = check(lost(records, start, stop), model.profile, model.host_facts())
    losses = [f for f in verdict.findings if f.rule_id == "records.none_dropped"]
    assert len(losses) == 1 and f"lost {stop - start} record(s)" in losses[0].message
    assert not verdict.passed
    rules = {f.rule_id for f in verdict.findings}
    assert not rules & {"seq.complete", "seq.first_load", "time.monotonic"}, \
        render_verdict(verdict)
    if not any(isinstance(r, DriverRecord) for r in records[start:stop]):
        assert "driver.order" not in rules, render_verdict(verdict)

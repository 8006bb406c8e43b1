"""Every oracle rule, failing and passing, table-driven; the sample traces; verdict and docs.

Each row starts from a trace the protocol model writes (which passes with no finding) and
breaks exactly the thing its rule is about; the passing twin is the nearest valid trace.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from harness.errors import InputError
from harness.oracle import (
    RULES,
    RULES_BY_ID,
    VERDICT_SCHEMA,
    Finding,
    HostFacts,
    Profile,
    Severity,
    Verdict,
    check,
    render_verdict,
    rules_for,
)
from harness.oracle.checks import MAX_REPORTS_PER_RULE
from harness.oracle.model import (
    STATUS_INSUFFICIENT_RESOURCES,
    STATUS_UNSUCCESSFUL,
    HotAdd,
    ProtocolModel,
    edited,
    find,
    lost,
    renumber,
    without,
)
from harness.oracle.rules import rules_markdown
from harness.records import (
    DriverEvent,
    DriverRecord,
    NotifyRecord,
    NotifyState,
    Phase,
    Record,
    read_records,
)

ROOT = Path(__file__).resolve().parents[2]
TRACES = ROOT / "tests" / "data" / "traces"
VETO = STATUS_INSUFFICIENT_RESOURCES
W, L = Profile.WINDOWS, Profile.LINUX

TWO_ADDS = ProtocolModel(existing=2, hotadds=(HotAdd(), HotAdd()))
VETOED_ADD = ProtocolModel(existing=2, hotadds=(HotAdd(veto=VETO), HotAdd()))
REPLAY_VETO = ProtocolModel(existing=3, replay_veto_at=2, deregister=False)
NO_FLAG = ProtocolModel(existing=2, add_existing=False, hotadds=(HotAdd(),))
LINUX = ProtocolModel(existing=2, hotadds=(HotAdd(veto=VETO), HotAdd()), profile=L)


def ev(event: DriverEvent) -> Callable[[Record], bool]:
    return lambda r: isinstance(r, DriverRecord) and r.event is event


def nt(state: NotifyState, phase: Phase, nt_number: int | None = None,
       ) -> Callable[[Record], bool]:
    return lambda r: (isinstance(r, NotifyRecord) and r.state is state and r.phase is phase
                      and (nt_number is None or r.nt_number == nt_number))


START, COMPLETE, FAILURE = NotifyState.START, NotifyState.COMPLETE, NotifyState.FAILURE
REPLAY, HOTADD = Phase.REPLAY, Phase.HOTADD


def at(records: Sequence[Record], pred: Callable[[Record], bool], nth: int = 0, **kw: object,
       ) -> list[Record]:
    """Change the nth record matching pred."""
    return edited(records, find(records, pred, nth), **kw)


def drop(records: Sequence[Record], pred: Callable[[Record], bool], nth: int = 0,
         ) -> list[Record]:
    return without(records, find(records, pred, nth))


def insert_after(records: Sequence[Record], pred: Callable[[Record], bool], new: Record,
                 ) -> list[Record]:
    out = list(records)
    out.insert(find(records, pred) + 1, new)
    return renumber(out)


def swap(records: Sequence[Record], i: int, j: int) -> list[Record]:
    out = list(records)
    out[i], out[j] = out[j], out[i]
    return renumber(out)


def interleaved() -> list[Record]:
    r = TWO_ADDS.records()
    first_complete = find(r, nt(COMPLETE, HOTADD))
    second_start = find(r, nt(START, HOTADD), 1)
    # Start(2) Start(3) Complete(2) Complete(3): move the second Start before the first close.
    out = list(r)
    out.insert(first_complete, out.pop(second_start))
    return [replace(x, t_ns=i * 1000) for i, x in enumerate(renumber(out))]


WINDOW_ADD = ProtocolModel(existing=2, hotadds=(HotAdd(),), hotadds_in_window=1)
# --load-during-adds: the first add came online before the register call (replayed)
LOAD_DURING = ProtocolModel(existing=2, hotadds=(HotAdd(), HotAdd()), adds_during_load=2,
                            replayed_adds=1, profile=L)


def hotadd_inside_the_replay() -> list[Record]:
    """A hot-add on another thread between the replay's Starts and its Completes."""
    r = WINDOW_ADD.records()
    start, complete = find(r, nt(START, HOTADD)), find(r, nt(COMPLETE, HOTADD))
    out = list(r)
    add = [out.pop(complete), out.pop(start)][::-1]
    first_replay_complete = find(out, nt(COMPLETE, REPLAY))
    out[first_replay_complete:first_replay_complete] = add
    out = [replace(x, active_count=3) if isinstance(x, NotifyRecord) and x.state is COMPLETE
           and x.phase is REPLAY else x for x in out]
    return [replace(x, t_ns=i * 1000) for i, x in enumerate(renumber(out))]


def start_after_replay_veto() -> list[Record]:
    records = ProtocolModel(existing=3, replay_veto_at=1, deregister=False).records()
    vetoed = records[find(records, nt(START, REPLAY, 1))]
    assert isinstance(vetoed, NotifyRecord)
    late = replace(vetoed, nt_number=2, number=2, op_status=0)
    return insert_after(records, nt(START, REPLAY, 1), late)


def second_add_lost() -> list[Record]:
    """The driver's ring overflowed during the last hot-add: its Start and Complete are lost."""
    r = TWO_ADDS.records()
    second = find(r, nt(START, HOTADD), 1)
    return lost(r, second, second + 2)


def loss_reported_at(records: Sequence[Record], index: int, count: int = 1) -> list[Record]:
    """A `dropped` line inserted before records[index] (at the end when index == len)."""
    t_ns = records[min(index, len(records) - 1)].t_ns
    line = DriverRecord(seq=0, t_ns=t_ns, event=DriverEvent.DROPPED, count=count)
    return renumber([*records[:index], line, *records[index:]])


def after_deregister() -> list[Record]:
    r = TWO_ADDS.records()
    dereg = find(r, ev(DriverEvent.DEREGISTERED))
    late = replace(r[find(r, nt(START, HOTADD))], t_ns=r[dereg].t_ns)
    return insert_after(r, ev(DriverEvent.DEREGISTERED), late)


STATUS_INVALID_PARAMETER = 0xC000000D


def mapped(records: Sequence[Record]) -> list[Record]:
    """The records as the Windows driver writes them: each notify also says what
    KeGetProcessorNumberFromIndex(nt_number) returned (its map_* fields), here the record's own
    (group, number) unless the record already carries map_* fields."""
    return [replace(r, extra={"map_status": 0, "map_group": r.group, "map_number": r.number})
            if isinstance(r, NotifyRecord) and "map_status" not in r.extra else r
            for r in records]


@dataclass(frozen=True)
class Case:
    rule_id: str
    failing: Callable[[], list[Record]]
    passing: Callable[[], list[Record]]
    profile: Profile = W
    host: HostFacts | None = None
    passing_host: HostFacts | None = None


def facts(model: ProtocolModel, **kw: int) -> HostFacts:
    return replace(model.host_facts(), **kw)


CASES = (
    Case("seq.complete", lambda: at(TWO_ADDS.records(), ev(DriverEvent.REGISTERED), seq=9),
         TWO_ADDS.records),
    Case("seq.first_load", lambda: drop(TWO_ADDS.records(), ev(DriverEvent.LOAD)),
         TWO_ADDS.records),
    Case("records.none_dropped", second_add_lost, TWO_ADDS.records),
    Case("time.monotonic", lambda: at(TWO_ADDS.records(), ev(DriverEvent.REGISTERED), t_ns=0),
         TWO_ADDS.records),
    Case("driver.order", lambda: TWO_ADDS.records()[:1], TWO_ADDS.records),
    Case("driver.deregister_before_unload",
         lambda: drop(TWO_ADDS.records(), ev(DriverEvent.DEREGISTERED)), TWO_ADDS.records),
    Case("driver.register_failed_status",
         lambda: at(REPLAY_VETO.records(), ev(DriverEvent.REGISTER_FAILED), status=0),
         REPLAY_VETO.records),
    Case("phase.label", lambda: at(TWO_ADDS.records(), nt(COMPLETE, HOTADD), phase=REPLAY),
         TWO_ADDS.records),
    Case("replay.not_interleaved", hotadd_inside_the_replay, WINDOW_ADD.records),
    Case("replay.active_at_registration", LOAD_DURING.records, LOAD_DURING.records,
         profile=L, host=facts(LOAD_DURING, adds_during_load=0),
         passing_host=LOAD_DURING.host_facts()),
    Case("replay.none_without_flag",
         lambda: at(TWO_ADDS.records(), ev(DriverEvent.LOAD), flags=0), NO_FLAG.records),
    Case("replay.starts", lambda: drop(drop(TWO_ADDS.records(), nt(START, REPLAY, 1)),
                                       nt(COMPLETE, REPLAY, 1)), TWO_ADDS.records),
    Case("replay.ascending", lambda: swap(TWO_ADDS.records(), 1, 2), TWO_ADDS.records),
    Case("replay.completes", lambda: drop(TWO_ADDS.records(), nt(COMPLETE, REPLAY, 1)),
         TWO_ADDS.records),
    Case("replay.veto_stops", start_after_replay_veto, REPLAY_VETO.records),
    Case("replay.veto_failures", lambda: drop(REPLAY_VETO.records(), nt(FAILURE, REPLAY)),
         REPLAY_VETO.records),
    Case("replay.veto_register_failed",
         lambda: at(REPLAY_VETO.records(), ev(DriverEvent.REGISTER_FAILED),
                    event=DriverEvent.REGISTERED, status=None), REPLAY_VETO.records),
    Case("hotadd.pair", lambda: drop(TWO_ADDS.records(), nt(COMPLETE, HOTADD)),
         TWO_ADDS.records),
    Case("hotadd.serialized", interleaved, TWO_ADDS.records),
    Case("hotadd.veto_honoured",
         lambda: at(VETOED_ADD.records(), nt(FAILURE, HOTADD), state=COMPLETE, status=0),
         VETOED_ADD.records),
    Case("hotadd.veto_failure",
         lambda: ProtocolModel(existing=2, hotadds=VETOED_ADD.hotadds,
                               veto_failure_delivered=False).records(), VETOED_ADD.records),
    Case("op_status.only_on_start",
         lambda: at(TWO_ADDS.records(), nt(COMPLETE, HOTADD), op_status=VETO),
         VETOED_ADD.records),
    Case("op_status.found_on_entry",
         lambda: at(VETOED_ADD.records(), nt(FAILURE, HOTADD), op_status_in=VETO),
         VETOED_ADD.records),
    Case("status.failure_error", lambda: at(VETOED_ADD.records(), nt(FAILURE, HOTADD), status=0),
         VETOED_ADD.records),
    Case("status.success_zero", lambda: at(TWO_ADDS.records(), nt(START, HOTADD), status=VETO),
         VETOED_ADD.records),
    Case("index.unused",
         lambda: at(at(TWO_ADDS.records(), nt(START, HOTADD), nt_number=1, number=1),
                    nt(COMPLETE, HOTADD), nt_number=1, number=1), TWO_ADDS.records),
    Case("index.next_free",
         lambda: at(at(NO_FLAG.records(), nt(START, HOTADD), nt_number=3, number=3),
                    nt(COMPLETE, HOTADD), nt_number=3, number=3), NO_FLAG.records),
    Case("procnum.consistent", lambda: at(TWO_ADDS.records(), nt(COMPLETE, HOTADD), number=7),
         TWO_ADDS.records),
    Case("procnum.matches_index",
         lambda: mapped(at(TWO_ADDS.records(), nt(COMPLETE, HOTADD), extra={
             "map_status": 0, "map_group": 1, "map_number": 2})), lambda: mapped(
             TWO_ADDS.records())),
    Case("procnum.index_during_start",
         lambda: mapped(at(TWO_ADDS.records(), nt(START, HOTADD), extra={
             "map_status": STATUS_INVALID_PARAMETER})), lambda: mapped(TWO_ADDS.records())),
    Case("count.never_decreases",
         lambda: at(TWO_ADDS.records(), nt(START, HOTADD), 1, active_count=1),
         TWO_ADDS.records),
    Case("count.grows", lambda: at(TWO_ADDS.records(), nt(COMPLETE, HOTADD), active_count=2),
         TWO_ADDS.records),
    Case("irql.level", lambda: at(TWO_ADDS.records(), nt(START, HOTADD), irql=1),
         lambda: ProtocolModel(existing=2, replay_irql=1, hotadds=(HotAdd(),)).records()),
    Case("linux.fixed_fields", lambda: at(LINUX.records(), nt(START, REPLAY), irql=1),
         LINUX.records, profile=L),
    Case("notify.after_end", after_deregister, TWO_ADDS.records),
    Case("host.adds", TWO_ADDS.records, TWO_ADDS.records, host=facts(TWO_ADDS, adds_performed=3),
         passing_host=TWO_ADDS.host_facts()),
    Case("host.completes", VETOED_ADD.records, VETOED_ADD.records,
         host=facts(VETOED_ADD, adds_expected_ok=2), passing_host=VETOED_ADD.host_facts()),
    Case("host.boot_count", TWO_ADDS.records, TWO_ADDS.records,
         host=facts(TWO_ADDS, boot_cpus=4, guest_count=6), passing_host=TWO_ADDS.host_facts()),
    Case("host.final_count", TWO_ADDS.records, TWO_ADDS.records,
         host=facts(TWO_ADDS, guest_count=3), passing_host=TWO_ADDS.host_facts()),
)


def fired(verdict: Verdict, rule_id: str) -> list[Finding]:
    return [f for f in verdict.findings if f.rule_id == rule_id]


def test_every_rule_has_a_case() -> None:
    assert sorted(c.rule_id for c in CASES) == sorted(r.id for r in RULES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.rule_id)
def test_rule_fails(case: Case) -> None:
    verdict = check(case.failing(), case.profile, case.host)
    found = fired(verdict, case.rule_id)
    assert found, render_verdict(verdict)
    want = RULES_BY_ID[case.rule_id].severity_in(case.profile)
    assert {f.severity for f in found} == {want}
    assert all(f.message for f in found)
    if want is Severity.FAIL:
        assert not verdict.passed


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.rule_id)
def test_rule_passes(case: Case) -> None:
    verdict = check(case.passing(), case.profile, case.passing_host)
    assert verdict.passed and not verdict.findings, render_verdict(verdict)


def test_findings_carry_the_seqs_of_the_offending_records() -> None:
    verdict = check(read_records(TRACES / "win_bad_complete_after_veto.jsonl"), W)
    (finding,) = verdict.findings
    assert finding.rule_id == "hotadd.veto_honoured" and finding.seqs == (3, 4)
    (finding,) = check(read_records(TRACES / "win_bad_interleaved.jsonl"), W).findings
    assert finding.seqs == (3, 4)


@pytest.mark.parametrize(("rule_id", "windows", "linux"), [
    ("replay.ascending", Severity.WARN, Severity.FAIL),
    ("hotadd.serialized", Severity.WARN, Severity.FAIL),
    ("hotadd.veto_failure", Severity.WARN, Severity.FAIL),
    ("replay.veto_register_failed", Severity.WARN, Severity.FAIL),
    ("index.next_free", Severity.WARN, Severity.WARN),
    ("count.never_decreases", Severity.FAIL, Severity.WARN),
])
def test_linux_profile_severities(rule_id: str, windows: Severity, linux: Severity) -> None:
    rule = RULES_BY_ID[rule_id]
    assert (rule.severity_in(W), rule.severity_in(L)) == (windows, linux)


def test_profile_specific_rules() -> None:
    assert "irql.level" not in {r.id for r in rules_for(L)}
    assert "linux.fixed_fields" not in {r.id for r in rules_for(W)}
    # A replay at APC_LEVEL is fine on Windows, but the Linux probe always writes irql 0.
    apc = ProtocolModel(existing=2, replay_irql=1).records()
    assert check(apc, W).passed
    assert {f.rule_id for f in check(apc, L).findings} == {"linux.fixed_fields"}


def test_linux_number_may_exceed_a_windows_group() -> None:
    big = ProtocolModel(existing=70, group_size=64).records()
    flat = [replace(r, group=0, number=r.nt_number) if isinstance(r, NotifyRecord) else r
            for r in big]
    assert check(flat, L).passed
    assert {f.rule_id for f in check(flat, W).findings} == {"procnum.consistent"}
    assert check(big, W).passed  # 70 processors on Windows: two groups


def test_model_rejects_impossible_runs() -> None:
    for kwargs in ({"existing": 0}, {"replay_veto_at": 3, "existing": 3},
                   {"replay_veto_at": 0, "add_existing": False},
                   {"replay_veto_at": 0, "hotadds": (HotAdd(),)},
                   {"deregister": False, "unload": True},
                   {"profile": L, "replay_irql": 1}):
        with pytest.raises(InputError, match="impossible protocol model"):
            ProtocolModel(**kwargs)
    with pytest.raises(InputError):
        HotAdd(veto=VETO, failure=STATUS_UNSUCCESSFUL)
    with pytest.raises(InputError):
        HotAdd(veto=1)


def test_warn_only_findings_pass_and_fail_findings_fail() -> None:
    warned = check(read_records(TRACES / "win_bad_interleaved.jsonl"), W)
    assert warned.passed and warned.count(Severity.WARN) == 1
    with pytest.raises(ValueError, match="passed must be False"):
        Verdict(passed=True, findings=(Finding("seq.complete", Severity.FAIL, "x", (1,)),),
                timeline=())


def test_a_flood_of_one_problem_is_capped() -> None:
    records = ProtocolModel(existing=8).records()
    broken = [replace(r, irql=2) if isinstance(r, NotifyRecord) else r for r in records]
    found = fired(check(broken, W), "irql.level")
    notifies = sum(isinstance(r, NotifyRecord) for r in records)
    assert notifies > MAX_REPORTS_PER_RULE
    assert len(found) == MAX_REPORTS_PER_RULE
    assert found[-1].message.endswith(f"(and {notifies - MAX_REPORTS_PER_RULE} more like this)")


def test_empty_trace_fails_with_first_load() -> None:
    verdict = check([], W)
    assert [f.rule_id for f in verdict.findings] == ["seq.first_load"]
    assert not verdict.passed


def test_timeline() -> None:
    verdict = check(read_records(TRACES / "win_hotadd_complete.jsonl"), W)
    rows = [(t.nt_number, t.phase, t.end_state, t.latency_ns) for t in verdict.timeline]
    assert rows == [(0, REPLAY, COMPLETE, 6900), (1, REPLAY, COMPLETE, 4400),
                    (2, HOTADD, COMPLETE, 51_763_000), (3, HOTADD, COMPLETE, 46_659_000)]
    replay_veto = check(read_records(TRACES / "win_replay_veto.jsonl"), W).timeline
    assert [(t.nt_number, t.end_state, t.status) for t in replay_veto] == [
        (0, FAILURE, VETO), (1, FAILURE, VETO), (2, None, None)]
    text = render_verdict(verdict)
    assert text.startswith("verdict: PASS (profile windows, 12 records, 0 fail, 0 warn)")
    assert "     3     0:3 hotadd" in text and "46.659" in text


def test_timeline_keeps_replay_rows_first_around_a_window_hotadd() -> None:
    """A hot-add whose Start lands between two replay Starts (streamed: the replay's count is
    not final when its row comes) is still listed after every replay row."""
    r = WINDOW_ADD.records()
    add = [r[find(r, nt(START, HOTADD))], r[find(r, nt(COMPLETE, HOTADD))]]
    out = [x for x in r if x not in add]
    second_start = find(out, nt(START, REPLAY, 1))
    out[second_start:second_start] = add
    verdict = check(renumber(out), W)
    assert "replay.not_interleaved" in {f.rule_id for f in verdict.findings}
    assert [(t.nt_number, t.phase) for t in verdict.timeline] == [
        (0, REPLAY), (1, REPLAY), (2, HOTADD)]


def test_verdict_dict_is_json_ready() -> None:
    verdict = check(read_records(TRACES / "win_hotadd_veto_no_failure.jsonl"), W)
    data = json.loads(json.dumps(verdict.to_dict()))
    assert data["schema"] == VERDICT_SCHEMA and data["verdict"] == "pass"
    assert data["counts"] == {"fail": 0, "warn": 1}
    (finding,) = data["findings"]
    assert finding["rule_id"] == "hotadd.veto_failure" and finding["source"] == "re"
    assert finding["seqs"] == [3]
    assert data["timeline"][0]["end_state"] is None


SAMPLES = json.loads((TRACES / "expected.json").read_text())
SAMPLE_RUNS = [(name, profile, want) for name, per in SAMPLES.items() if name != "_about"
               for profile, want in per.items() if profile != "input_error"]


def test_every_sample_trace_has_an_expectation() -> None:
    assert sorted(p.name for p in TRACES.glob("*.jsonl")) == sorted(
        k for k in SAMPLES if k != "_about")


@pytest.mark.parametrize(("name", "profile", "want"), SAMPLE_RUNS,
                         ids=[f"{n}-{p}" for n, p, _ in SAMPLE_RUNS])
def test_sample_traces(name: str, profile: str, want: dict[str, object]) -> None:
    verdict = check(read_records(TRACES / name), Profile(profile))
    got = {"passed": verdict.passed,
           "fail": sorted({f.rule_id for f in verdict.findings if f.severity is Severity.FAIL}),
           "warn": sorted({f.rule_id for f in verdict.findings if f.severity is Severity.WARN})}
    assert got == want, render_verdict(verdict)


def test_docs_list_every_rule_as_the_code_has_it() -> None:
    doc = (ROOT / "docs" / "oracle-rules.md").read_text()
    assert rules_markdown() in doc, "regenerate the table: python -c 'from harness.oracle." \
                                    "rules import rules_markdown; print(rules_markdown())'"


def test_a_second_load_in_the_same_file_fails() -> None:
    twice = TWO_ADDS.records() + TWO_ADDS.records()
    fails = {f.rule_id for f in check(twice, W).findings if f.severity is Severity.FAIL}
    assert {"seq.complete", "driver.order", "notify.after_end"} <= fails


def test_host_facts_are_validated() -> None:
    with pytest.raises(ValueError, match="adds_performed must be a non-negative int"):
        HostFacts(adds_performed=-1)
    with pytest.raises(ValueError, match="cannot exceed"):
        HostFacts(adds_performed=1, adds_expected_ok=2)
    assert HostFacts().guest_count is None  # every cross-check optional


def test_host_rules_are_skipped_for_unknown_facts() -> None:
    verdict = check(TWO_ADDS.records(), W, HostFacts(guest_count=4))  # boot from the load record
    assert verdict.passed and not verdict.findings
    wrong = check(TWO_ADDS.records(), W, HostFacts(guest_count=5))
    assert [f.rule_id for f in wrong.findings] == ["host.final_count"]


def test_lost_records_fail_once_naming_the_count_and_the_fix() -> None:
    records = second_add_lost()
    verdict = check(records, W)
    (finding,) = verdict.findings  # no seq.complete: the dropped line took its own seq
    dropped = records[find(records, ev(DriverEvent.DROPPED))]
    assert (finding.rule_id, finding.severity, finding.seqs) == (
        "records.none_dropped", Severity.FAIL, (dropped.seq,))
    assert "lost 2 record(s)" in finding.message and "in all" not in finding.message
    assert "HAP_RING_CAPACITY in driver/recorder/probe_public.h" in finding.message
    assert "driver/README.md" in finding.message
    assert not verdict.passed


def test_every_loss_is_reported_with_the_total() -> None:
    records = lost(second_add_lost(), 3, 4)  # and a replay Start before it
    found = fired(check(records, W), "records.none_dropped")
    assert [f.seqs for f in found] == [(4,), (find(records, ev(DriverEvent.DROPPED), 1) + 1,)]
    assert all("(3 in all, in 2 places)" in f.message for f in found)


@pytest.mark.parametrize("index", range(1, len(TWO_ADDS.records()) + 1))
def test_a_dropped_line_anywhere_after_load_breaks_no_other_rule(index: int) -> None:
    for model, profile in ((TWO_ADDS, W), (REPLAY_VETO, W), (LINUX, L)):
        records = model.records()
        if index > len(records):
            continue
        verdict = check(loss_reported_at(records, index), profile, model.host_facts())
        assert [(f.rule_id, f.severity) for f in verdict.findings] == [
            ("records.none_dropped", Severity.FAIL)], render_verdict(verdict)


def test_a_dropped_line_before_load_is_out_of_order() -> None:
    records = loss_reported_at(TWO_ADDS.records(), 0)
    fails = {f.rule_id for f in check(records, W).findings}
    assert fails == {"records.none_dropped", "seq.first_load", "driver.order"}


def test_a_seq_gap_beside_a_dropped_line_is_still_damage() -> None:
    # The driver numbers lines as it writes them: lost records never leave a gap, so a gap
    # next to a `dropped` line is not excused by it.
    records = second_add_lost()
    at_drop = find(records, ev(DriverEvent.DROPPED))
    gapped = [*records[:at_drop + 1], *(replace(r, seq=r.seq + 2) for r in records[at_drop + 1:])]
    fails = {f.rule_id for f in check(gapped, W).findings}
    assert fails == {"records.none_dropped", "seq.complete"}


def test_the_model_loses_records_as_the_driver_does() -> None:
    records = TWO_ADDS.records()
    mid = lost(records, 2, 5)
    assert len(mid) == len(records) - 2
    assert mid[2] == DriverRecord(seq=3, t_ns=records[5].t_ns, event=DriverEvent.DROPPED,
                                  count=3)
    assert mid[3] == replace(records[5], seq=4)
    end = lost(records, len(records) - 2, len(records))
    assert end[-1] == DriverRecord(seq=len(records) - 1, t_ns=records[-1].t_ns,
                                   event=DriverEvent.DROPPED, count=2)
    for start, stop in ((0, 1), (3, 3), (2, len(records) + 1)):
        with pytest.raises(ValueError, match="cannot lose"):
            lost(records, start, stop)

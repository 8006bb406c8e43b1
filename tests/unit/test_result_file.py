"""result.json read back through `harness.result_file`: what a run writes reads back as the
same values, typed; an absent key reads as absent; a wrong type or another schema is an
InputError naming the key, so no report is built on a guess."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.clock import ClockMapping
from harness.errors import InputError
from harness.host.machine import CpuSlot, HotplugMethod, PluggedVcpu
from harness.observation import AddOutcome, HostCheck
from harness.oracle import HostFacts, Severity, check
from harness.oracle.model import HotAdd, ProtocolModel
from harness.result import Interruption, RunResult, write_result
from harness.result_file import NO_RUN, RESULT_SCHEMA, parse_result, read_result
from harness.spec import ScenarioSpec
from harness.warm import StartInfo


def _add(index: int, vcpu: int) -> AddOutcome:
    slot = CpuSlot(socket_id=0, die_id=0, core_id=vcpu, thread_id=0,
                   qom_path=f"/machine/peripheral/vcpu{vcpu}")
    return AddOutcome(
        index=index, plugged=PluggedVcpu(vcpu, slot, HotplugMethod.SET_VCPU, 1000.0 + index,
                                         0.0123),
        ost_status=0, ost_ms=21.5, guest_index=vcpu, end_state="complete",
        start_ms_approx=70.25, end_ms_approx=170.5, start_to_end_ms=100.25,
        known_ms=172.0, known_via="console")


def _result(tmp_path: Path) -> RunResult:
    model = ProtocolModel(existing=2, hotadds=(HotAdd(), HotAdd(veto=0xC000009A)))
    # the host expected both adds to complete: two findings against the vetoed one
    verdict = check(model.records(), model.profile, HostFacts(
        adds_performed=2, adds_expected_ok=2, boot_cpus=2, guest_count=4))
    late = AddOutcome(index=3, plugged=_add(3, 1).plugged, ost_status=0, ost_ms=9.0,
                      guest_index=None, end_state="none", start_ms_approx=None,
                      end_ms_approx=None, start_to_end_ms=None)
    return RunResult(
        ScenarioSpec(), tmp_path, "hotadd-reference-1234abcd", verdict,
        (HostCheck("qemu.present", Severity.FAIL, False, "QEMU shows 3 CPUs"),),
        (_add(1, 2), _add(2, 3)), {"boot": 1.5, "total": 9.25}, {"qemu": "7.2.22"},
        error="[add 2] no answer", clock_offset=999.5, after_unload=late,
        interrupted=Interruption("SIGINT", "add 2", ("boot", "load")),
        start=StartInfo(warm=True, key="k1", saved=True),
        clock=ClockMapping(offset=999.5, uncertainty_s=0.0015, round_trip_s=0.003, samples=8,
                           consistent=True), clock_method="handshake")


def test_what_a_run_writes_reads_back_typed(tmp_path: Path) -> None:
    run = _result(tmp_path)
    got = read_result(write_result(run))
    assert (got.schema, got.outcome, got.exit_code) == (RESULT_SCHEMA, "interrupted", 2)
    assert got.domain == "hotadd-reference-1234abcd" and got.error == "[add 2] no answer"
    assert got.scenario.guest == "reference" and got.scenario.boot_vcpus == 2
    assert got.scenario.adds == 2 and got.scenario.veto_index is None
    assert run.verdict is not None and got.verdict is not None
    assert got.verdict.verdict == "fail" and got.verdict.records == run.verdict.record_count
    assert got.verdict.fails == run.verdict.count(Severity.FAIL)
    assert [(f.rule_id, f.seqs) for f in got.verdict.findings] == [
        (f.rule_id, f.seqs) for f in run.verdict.findings] != []
    assert [(e.nt_number, e.start_t_ns, e.end_t_ns) for e in got.verdict.timeline] == [
        (t.nt_number, t.start_t_ns, t.end_t_ns) for t in run.verdict.timeline]
    assert [(c.check_id, c.passed, c.severity) for c in got.host_checks] == [
        ("qemu.present", False, "fail")]
    first = got.adds[0]
    assert (first.index, first.libvirt_vcpu, first.method, first.core) == (1, 2, "setVcpu", 2)
    assert (first.host_t_wall, first.call_ms, first.ost_ms) == (1001.0, 12.3, 21.5)
    assert (first.guest_index, first.end_state, first.known_via) == (2, "complete", "console")
    assert got.add_after_unload is not None and got.add_after_unload.guest_index is None
    assert got.timings_s == {"boot": 1.5, "total": 9.25} and got.versions == {"qemu": "7.2.22"}
    assert (got.clock.t0_host_wall, got.clock.uncertainty_ms, got.clock.method) == (
        999.5, 1.5, "handshake")
    assert got.start is not None and (got.start.warm, got.start.key, got.start.saved) == (
        True, "k1", True)
    assert got.interrupted is not None and got.interrupted.completed_stages == ("boot", "load")


def test_a_test_without_a_run_reads_as_no_run() -> None:
    got = parse_result(NO_RUN)
    assert got.outcome == "none" and got.verdict is None and got.adds == ()
    assert got.clock.uncertainty_ms is None and got.clock.consistent and got.start is None


@pytest.mark.parametrize(("edit", "named"), [
    (lambda d: d["adds"][0].update(ost_ms="21.5"), "adds[0]: ost_ms"),
    (lambda d: d["adds"][1].pop("host_t_wall"), "adds[1] has no host_t_wall"),
    (lambda d: d["verdict"]["findings"][0].update(seqs=["3"]), "findings[0].seqs"),
    (lambda d: d.update(host_checks={"qemu.present": False}), "host_checks is not a list"),
    (lambda d: d["guest_clock"].update(samples=True), "guest_clock: samples"),
    (lambda d: d.update(schema="hotadd.result/2"), "hotadd.result/2"),
])
def test_a_wrong_value_is_refused_naming_its_key(tmp_path: Path, edit: object,
                                                 named: str) -> None:
    data = json.loads(write_result(_result(tmp_path)).read_text())
    assert callable(edit)
    edit(data)
    with pytest.raises(InputError) as err:
        parse_result(data, "run/result.json")
    assert named in err.value.problem and "run/result.json" in err.value.problem


def test_an_unreadable_file_says_which(tmp_path: Path) -> None:
    bad = tmp_path / "result.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match=str(bad)):
        read_result(bad)

"""result.json read back through `harness.result_file`: what a run writes reads back as the
same values, typed; an absent key reads as absent; a wrong type or another schema is an
InputError naming the key, so no report is built on a guess."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.clock import ClockMapping
from harness.developer import DriverCheck, DriverReport, StreamResult
from harness.errors import InputError
from harness.guests.base import DriverPackage, ProbeSettings
from harness.host.machine import CpuSlot, HotplugMethod, PluggedVcpu
from harness.observation import AddOutcome, HostCheck, Performed, host_checks
from harness.oracle import HostFacts, Severity, check
from harness.oracle.model import HotAdd, ProtocolModel
from harness.report.html import write_report
from harness.report.junit import result_properties
from harness.result import Interruption, RunResult, write_result
from harness.result_file import (
    NO_RUN,
    RESULT_SCHEMA,
    PytestOutcome,
    parse_result,
    read_result,
    read_test_file,
)
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


DATA = Path(__file__).resolve().parents[1] / "data" / "results"


def test_the_first_format_hotadd_wrote_still_reads() -> None:
    """hotadd 0.1.0's first result.json: no guest_clock, start, add_after_unload, driver, nor
    when hotadd knew each add's end. It reads, what is missing read as absent."""
    got = read_result(DATA / "first-format.json")
    assert (got.outcome, got.versions["hotadd"]) == ("pass", "0.1.0")
    assert got.verdict is not None and got.verdict.records == 12 and not got.verdict.findings
    assert [a.libvirt_vcpu for a in got.adds] == [7, 5]
    assert [(a.known_ms, a.known_via, a.known_gap_ms) for a in got.adds] == [
        (None, "none", None)] * 2
    assert got.clock.t0_host_wall is None and got.clock.uncertainty_ms is None
    assert got.start is None and got.add_after_unload is None and got.driver is None
    assert got.scenario.adds == 2 and not got.scenario.add_after_unload


@pytest.mark.parametrize(("edit", "named"), [
    (lambda d: d.update(schema="hotadd.result/2", versions={"hotadd": "0.9.1"}),
     "has schema 'hotadd.result/2', written by hotadd 0.9.1; hotadd 0.1.0 reads "
     "'hotadd.result/1'"),
    (lambda d: d.update(schema="hotadd.result/2", versions=None),
     "written by another hotadd version"),
    (lambda d: d.pop("schema"), "names no schema: it is not a result.json hotadd wrote"),
])
def test_another_or_no_schema_is_refused_naming_the_version(edit: object, named: str) -> None:
    data = json.loads((DATA / "first-format.json").read_text())
    assert callable(edit)
    edit(data)
    with pytest.raises(InputError) as err:
        parse_result(data, "run/result.json")
    assert named in err.value.problem and err.value.fix


@pytest.mark.parametrize("content", ["[1, 2]", '"pass"', "null"])
def test_a_file_that_is_no_json_object_is_refused(tmp_path: Path, content: str) -> None:
    bad = tmp_path / "result.json"
    bad.write_text(content)
    with pytest.raises(InputError, match="is not a JSON object"):
        read_result(bad)


def test_the_developers_driver_and_known_gap_read_back(tmp_path: Path) -> None:
    run = _result(tmp_path)
    pkg = DriverPackage(tmp_path / "mine.ko", (("depth", "3"),), name="mine")
    driver = DriverReport(pkg, (DriverCheck("load", True), DriverCheck("add 1", False)),
                          (StreamResult("mine", "mine.jsonl", 12, run.verdict),
                           StreamResult("other", "", 0, None)), faulting_module="mine (x)")
    got = read_result(write_result(dataclasses.replace(run, driver=driver)))
    assert got.driver is not None and run.verdict is not None
    assert (got.driver.name, got.driver.order, dict(got.driver.params)) == (
        "mine", "after", {"depth": "3"})
    assert not got.driver.passed and got.driver.faulting_module == "mine (x)"
    assert [(c.after, c.running) for c in got.driver.checks] == [
        ("load", True), ("add 1", False)]
    first, second = got.driver.streams
    assert first.verdict is not None and first.verdict.fails == run.verdict.count(Severity.FAIL)
    assert (first.records, second.verdict) == (12, None)
    assert got.adds[0].known_gap_ms == pytest.approx(172.0 - 170.5)


def test_a_pytest_tests_file_reads_typed_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    good = tmp_path / "test.json"
    good.write_text('{"nodeid": "t.py::test_x", "outcome": "failed", "pid": 7}')
    assert read_test_file(good) == PytestOutcome("t.py::test_x", "failed")
    good.write_text('{"nodeid": ["t.py"]}')
    with pytest.raises(InputError, match="nodeid"):
        read_test_file(good)


def test_the_steps_a_test_took_are_the_results_not_the_specs(tmp_path: Path) -> None:
    """A test that loaded the probe with a plan of 0 adds and made 1: the spec stays what was
    asked; result.json's scenario says what was judged, as it always did."""
    spec = ScenarioSpec(adds=0)
    base = RunResult(spec, tmp_path, "d", None, (), (_add(1, 2),), {}, {"hotadd": "0.1.0"})
    judged = dataclasses.replace(base, performed=Performed(adds=1, add_after_unload=True))
    assert judged.spec is spec and spec.adds == 0
    got = read_result(write_result(judged)).scenario
    assert (got.adds, got.add_after_unload) == (1, True)
    assert json.loads((tmp_path / "result.json").read_text())["scenario"]["vcpu_ids"] == []
    assert read_result(write_result(base)).scenario.adds == 0


def test_host_checks_count_the_adds_made_not_the_plan() -> None:
    """Two adds planned, one made (a test driving the steps): the guest should show one more
    processor, not two."""
    spec = ScenarioSpec(adds=2)
    checks = {c.check_id: c for c in host_checks(spec, (_add(1, 2),), 3, 3, guest_count=3)}
    assert checks["guest.online"].passed and checks["qemu.present"].passed
    vetoed = ScenarioSpec(adds=2, probe=ProbeSettings(veto_index=2))
    assert (vetoed.expected_ok(1), vetoed.expected_ok(0), vetoed.adds_expected_ok) == (0, 0, 1)


def test_junit_properties_read_an_old_result_file() -> None:
    """The JUnit properties come from the typed result, so an old file gives them too."""
    props = dict(result_properties(read_result(DATA / "first-format.json")))
    assert props["hotadd.outcome"] == props["hotadd.verdict"] == "pass"
    assert props["hotadd.guest"] == "reference://hotadd-reference-342f0d1b"
    assert props["hotadd.add.2"].startswith("vCPU 5 -> CPU 3: complete; call 2")
    assert props["hotadd.time.add_2"] == "4.238" and "hotadd.driver" not in props


def test_hotadd_report_on_a_newer_result_file_says_which_version_wrote_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The real CLI: exit 2 with the problem and the fix, no page written, no traceback."""
    data = json.loads((DATA / "first-format.json").read_text())
    data.update(schema="hotadd.result/2", versions={"hotadd": "0.9.1"})
    (tmp_path / "result.json").write_text(json.dumps(data))
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "written by hotadd 0.9.1" in err and "read it with hotadd 0.9.1" in err
    assert "Traceback" not in err and not (tmp_path / "report.html").exists()


def test_the_report_page_of_an_old_run_shows_what_it_lacks_as_unknown(tmp_path: Path) -> None:
    (tmp_path / "result.json").write_text((DATA / "first-format.json").read_text())
    page = write_report(tmp_path).read_text()
    assert "start: unknown" in page and "uncertainty not measured" in page
    assert "reference guest, 2 boot vCPUs, 2 adds" in page

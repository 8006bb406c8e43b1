"""`hotadd check` on hostile input, through the real CLI: unreadable input is exit 2 naming
file:line and why (never a traceback, a MemoryError or a hang), and the oracle holds bounded
memory whatever the trace's length (checked with tracemalloc, not a clock)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from harness.oracle import Profile, Severity, check
from harness.oracle.checks import MAX_REPORTS_PER_RULE
from harness.oracle.model import (
    STATUS_INSUFFICIENT_RESOURCES,
    HotAdd,
    ProtocolModel,
    edited,
)
from harness.records import (
    MAX_LINE,
    NotifyRecord,
    Record,
    iter_record_file,
    iter_records,
    record_to_dict,
)
from tests.support.processes import run_hotadd

LOAD = '{"v":1,"seq":1,"t_ns":0,"kind":"driver","event":"load","active_count":1,"flags":1}\n'


def refused(path: Path | str) -> str:
    proc = run_hotadd("check", "--profile", "windows", str(path), timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr
    assert "fix:" in proc.stderr
    return proc.stderr


def test_a_5000_digit_integer_is_unreadable_input(tmp_path: Path) -> None:
    trace = tmp_path / "big.jsonl"
    trace.write_text(LOAD + '{"v":1,"seq":' + "9" * 5000 + "}\n")
    assert f"{trace}:2: not a record" in refused(trace)


def test_deeply_nested_json_is_unreadable_input(tmp_path: Path) -> None:
    trace = tmp_path / "nested.jsonl"
    depth = 20_000  # within one line's limit, far past Python's recursion limit
    trace.write_text(LOAD + "[" * depth + "]" * depth + "\n")
    assert f"{trace}:2: JSON nested too deeply to be a record" in refused(trace)


def test_dev_zero_is_refused_after_one_bounded_line() -> None:
    err = refused("/dev/zero")
    assert f"/dev/zero:1: the line is longer than {MAX_LINE} characters" in err


def test_a_line_without_end_is_refused(tmp_path: Path) -> None:
    trace = tmp_path / "long.jsonl"
    trace.write_text(LOAD + "x" * (10 * MAX_LINE))
    assert f"{trace}:2: the line is longer than {MAX_LINE} characters" in refused(trace)


def write_model(path: Path, model: ProtocolModel) -> None:
    with path.open("w") as handle:
        def write(record: Record) -> None:
            handle.write(json.dumps(record_to_dict(record), separators=(",", ":")) + "\n")
        model.stream(write)


@pytest.mark.parametrize("map_status", ["busy", [1, 2], {"a": None}, 1.5])
def test_a_map_status_of_any_json_type_is_judged(tmp_path: Path, map_status: object) -> None:
    """map_status is an extra field (the Windows probe's), so any JSON value may be there: the
    oracle reports it under procnum.matches_index, it does not crash on it."""
    records = ProtocolModel(existing=1, hotadds=(HotAdd(),)).records()
    last_notify = max(i for i, r in enumerate(records) if isinstance(r, NotifyRecord))
    trace = tmp_path / "map.jsonl"
    trace.write_text("".join(json.dumps(record_to_dict(r)) + "\n" for r in edited(
        records, last_notify, extra={"map_status": map_status, "map_group": 0,
                                     "map_number": 1})))
    proc = run_hotadd("check", "--profile", "windows", "--json", str(trace), timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (finding,) = json.loads(proc.stdout)["findings"]
    assert finding["rule_id"] == "procnum.matches_index"
    assert json.dumps(map_status) in finding["message"]


def peak_bytes_of_check(path: Path) -> int:
    tracemalloc.start()
    try:
        verdict = check(iter_record_file(path), Profile.WINDOWS)
        assert verdict.passed and verdict.timeline_omitted > 0
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_trace(tmp_path: Path) -> None:
    """Four times the hot-adds (each vetoed, so the processors stay the same), well past the
    timeline's cap: the oracle's peak allocation stays about the same (the old oracle kept
    every record, so it grew fourfold)."""
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    vetoed = HotAdd(veto=STATUS_INSUFFICIENT_RESOURCES)
    write_model(small, ProtocolModel(existing=2, hotadds=(vetoed,) * 10_000))
    write_model(large, ProtocolModel(existing=2, hotadds=(vetoed,) * 40_000))
    peak_small = peak_bytes_of_check(small)
    peak_large = peak_bytes_of_check(large)
    assert peak_large < 1.25 * peak_small, (peak_small, peak_large)


def test_findings_are_capped_and_counted() -> None:
    adds = 5_000
    records = [r for r in ProtocolModel(existing=1, hotadds=(HotAdd(),) * adds).records()
               if not (getattr(r, "state", None) is not None and r.state.value == "complete")]
    verdict = check(records, Profile.WINDOWS)
    never_closed = [f for f in verdict.findings if f.rule_id == "hotadd.pair"]
    assert len(never_closed) == MAX_REPORTS_PER_RULE
    assert never_closed[-1].message.endswith(
        f"(and {adds - MAX_REPORTS_PER_RULE} more like this)")
    assert not verdict.passed and verdict.count(Severity.FAIL) <= 8 * 40


@pytest.mark.parametrize("existing", [2**32 - 1])
def test_a_load_claiming_billions_of_processors_is_judged_not_materialised(
        existing: int) -> None:
    text = ('{"v":1,"seq":1,"t_ns":0,"kind":"driver","event":"load","active_count":'
            f'{existing},"flags":1}}\n'
            '{"v":1,"seq":2,"t_ns":1,"kind":"driver","event":"registered"}\n'
            '{"v":1,"seq":3,"t_ns":2,"kind":"notify","state":"start","phase":"hotadd",'
            f'"nt_number":5,"group":0,"number":5,"status":0,"op_status":0,"active_count":'
            f'{existing},"irql":0}}\n')
    verdict = check(iter_records(text), Profile.WINDOWS)
    assert "replay.starts" in {f.rule_id for f in verdict.findings}
    assert "index.unused" in {f.rule_id for f in verdict.findings}

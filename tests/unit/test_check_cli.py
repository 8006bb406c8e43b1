"""`hotadd check` as a user runs it: the real CLI in a subprocess, exit codes, --json schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TRACES = ROOT / "tests" / "data" / "traces"
PYTHON = ROOT / ".venv" / "bin" / "python"


def hotadd_check(*args: str | Path) -> subprocess.CompletedProcess[str]:
    python = PYTHON if PYTHON.exists() else Path(sys.executable)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([str(python), "-m", "harness", "check", *map(str, args)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60, check=False)


def as_json(run: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(run.stdout)
    return data


def test_pass_exits_0_with_a_readable_verdict_and_timeline() -> None:
    run = hotadd_check("--profile", "windows", TRACES / "win_hotadd_veto.jsonl")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("verdict: PASS (profile windows, 10 records, 0 fail, 0 warn)")
    assert "timeline" in run.stdout and "0xC000009A" in run.stdout


def test_fail_exits_1_and_names_rule_and_seqs() -> None:
    run = hotadd_check(TRACES / "win_bad_complete_after_veto.jsonl")  # default profile windows
    assert run.returncode == 1, run.stderr
    assert "FAIL hotadd.veto_honoured [doc] seq 3, 4:" in run.stdout


def test_lost_records_are_a_failing_verdict_not_an_input_error() -> None:
    """The Windows driver's ring overflowed: the trace reads fine and fails (exit 1)."""
    trace = TRACES / "win_ring_overflow.jsonl"  # written by the driver's own ring code
    run = hotadd_check(trace)
    assert run.returncode == 1, run.stderr
    assert run.stderr == ""
    assert "FAIL records.none_dropped [format] seq 9: the probe lost 2 record(s)" in run.stdout
    assert "HAP_RING_CAPACITY in driver/recorder/probe_public.h" in run.stdout
    data = as_json(hotadd_check("--json", trace))
    dropped = [f for f in data["findings"] if f["rule_id"] == "records.none_dropped"]
    assert [(f["severity"], f["seqs"]) for f in dropped] == [("fail", [9]), ("fail", [18])]
    assert "(4 in all, in 2 places)" in dropped[0]["message"]


def test_profile_decides_the_severity() -> None:
    trace = TRACES / "win_bad_interleaved.jsonl"
    assert hotadd_check("--profile", "windows", trace).returncode == 0
    assert hotadd_check("--profile", "linux", trace).returncode == 1


@pytest.mark.parametrize(("name", "where", "why"), [
    ("malformed_missing_field.jsonl", ":3:", 'missing required field "op_status"'),
    ("malformed_truncated.jsonl", ":2:", "not JSON"),
])
def test_malformed_lines_exit_2_with_file_line_and_why(name: str, where: str, why: str) -> None:
    run = hotadd_check("--json", TRACES / name)
    assert run.returncode == 2
    assert run.stdout == ""
    assert f"{TRACES / name}{where} {why}" in run.stderr
    assert "fix:" in run.stderr


def test_missing_file_and_bad_arguments_exit_2(tmp_path: Path) -> None:
    run = hotadd_check(tmp_path / "absent.jsonl")
    assert run.returncode == 2 and "cannot read records file" in run.stderr
    assert hotadd_check("--adds", "-1", TRACES / "win_hotadd_veto.jsonl").returncode == 2
    assert hotadd_check("--profile", "macos", TRACES / "win_hotadd_veto.jsonl").returncode == 2
    run = hotadd_check("--adds", "1", "--adds-ok", "2", TRACES / "win_hotadd_veto.jsonl")
    assert run.returncode == 2 and "--adds-ok 2 exceeds --adds 1" in run.stderr


def test_json_schema() -> None:
    run = hotadd_check("--profile", "linux", "--json", TRACES / "linux_hotadd_veto.jsonl",
                       "--adds", "1", "--adds-ok", "0", "--boot-cpus", "2", "--guest-count", "2")
    assert run.returncode == 0, run.stderr
    data = as_json(run)
    assert set(data) == {"schema", "verdict", "passed", "profile", "records", "counts",
                         "rules_checked", "findings", "timeline"}
    assert "linux.fixed_fields" in data["rules_checked"]
    assert "irql.level" not in data["rules_checked"]
    assert (data["schema"], data["verdict"], data["passed"], data["profile"], data["records"]) \
        == ("hotadd.verdict/1", "pass", True, "linux", 8)
    assert data["counts"] == {"fail": 0, "warn": 0} and data["findings"] == []
    assert [row["nt_number"] for row in data["timeline"]] == [0, 1, 2]
    veto_row = data["timeline"][2]
    assert set(veto_row) == {"nt_number", "group", "number", "phase", "start_t_ns", "end_state",
                             "end_t_ns", "latency_ns", "status"}
    assert (veto_row["phase"], veto_row["end_state"], veto_row["latency_ns"],
            veto_row["status"]) == ("hotadd", "failure", 2119, 0xC000009A)


def test_host_cross_checks_from_flags() -> None:
    run = hotadd_check("--json", TRACES / "win_hotadd_complete.jsonl", "--adds", "3",
                       "--boot-cpus", "2", "--guest-count", "5")
    assert run.returncode == 1
    findings = as_json(run)["findings"]
    assert {f["rule_id"] for f in findings} == {"host.adds", "host.final_count"}
    finding = next(f for f in findings if f["rule_id"] == "host.adds")
    assert set(finding) == {"rule_id", "severity", "source", "statement", "message", "seqs"}
    assert finding["severity"] == "fail" and finding["seqs"] == [7]
    assert "2 hot-add Start(s) for 3 vCPU add(s)" in finding["message"]


def test_adds_during_load_from_flags(tmp_path: Path) -> None:
    """A linux trace where one of two adds came online before the register call: judged as
    such with --adds-during-load, a failure without it."""
    from harness.oracle.model import HotAdd, ProtocolModel
    from harness.records import dump_records

    model = ProtocolModel(existing=2, hotadds=(HotAdd(), HotAdd()), adds_during_load=2,
                          replayed_adds=1)
    trace = tmp_path / "records.jsonl"
    trace.write_text(dump_records(model.records()))
    counts = ("--adds", "2", "--boot-cpus", "2", "--guest-count", "4")
    assert hotadd_check(trace, *counts, "--adds-during-load", "2").returncode == 0
    strict = hotadd_check("--json", trace, *counts)
    assert strict.returncode == 1
    assert "host.adds" in {f["rule_id"] for f in as_json(strict)["findings"]}
    refused = hotadd_check(trace, "--adds-during-load", "2")
    assert refused.returncode == 2 and "--adds" in refused.stderr

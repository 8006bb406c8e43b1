"""`hotadd run` end to end, as a user runs it: real libvirt, real QEMU (TCG), the reference
guest's real kernel and probe module, records over real SSH, the oracle, the run directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import run_hotadd, short_root

pytestmark = pytest.mark.vm


def run(cli_uri: str, run_dir: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    proc = run_hotadd("run", "--libvirt-uri", cli_uri, "--run-dir", str(run_dir), "--json",
                      "--quiet", *args)
    result = json.loads((run_dir / "result.json").read_text()) if (
        run_dir / "result.json").exists() else {}
    return proc.returncode, result, proc.stdout + proc.stderr


def notifies(run_dir: Path) -> list[tuple[str, str, int]]:
    out = []
    for line in (run_dir / "records.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] == "notify":
            out.append((rec["phase"], rec["state"], rec["nt_number"]))
    return out


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any], Path]:
    """The README's default scenario, run once for the tests that inspect it."""
    base = tmp_path_factory.mktemp("default")
    with short_root() as root:
        code, result, output = run(f"qemu:///embed?root={root}", base / "run")
    assert code == 0, output
    return code, result, base / "run"


def test_default_scenario_passes_with_artifacts(default_run) -> None:  # type: ignore[no-untyped-def]
    _, result, run_dir = default_run
    assert result["outcome"] == "pass" and result["exit_code"] == 0
    for name in ("records.jsonl", "serial.log", "domain.xml", "result.json"):
        assert (run_dir / name).stat().st_size > 0, name
    assert [a["end_state"] for a in result["adds"]] == ["complete", "complete"]
    assert [a["guest_index"] for a in result["adds"]] == [2, 3]
    assert all(a["ost_status"] == 0 and a["ost_ms"] > 0 for a in result["adds"])
    assert notifies(run_dir) == [
        ("replay", "start", 0), ("replay", "start", 1),
        ("replay", "complete", 0), ("replay", "complete", 1),
        ("hotadd", "start", 2), ("hotadd", "complete", 2),
        ("hotadd", "start", 3), ("hotadd", "complete", 3)]
    assert {"ready", "add 1", "add 2", "collect", "total"} <= set(result["timings_s"])
    assert {"boot", "restore"} & set(result["timings_s"])  # cold, or from a saved guest
    assert result["versions"]["libvirt"] and result["versions"]["accelerator"] in ("tcg", "kvm")
    assert all(c["passed"] for c in result["host_checks"])


def test_veto_on_hot_add_is_a_pass_with_the_cpu_offline(cli_uri: str, tmp_path: Path) -> None:
    """The probe vetoes the second hot-added CPU (index 3): start then failure, the CPU stays
    offline, and the verdict passes because the failure path behaved as specified."""
    code, result, output = run(cli_uri, tmp_path / "run", "--veto-cpu", "3")
    assert code == 0, output
    assert [a["end_state"] for a in result["adds"]] == ["complete", "failure"]
    tail = notifies(tmp_path / "run")[-2:]
    assert tail == [("hotadd", "start", 3), ("hotadd", "failure", 3)]
    online = next(c for c in result["host_checks"] if c["check_id"] == "guest.online")
    assert online["passed"] and "3 processors online" in online["message"]


def test_veto_during_replay_fails_registration(cli_uri: str, tmp_path: Path) -> None:
    code, result, output = run(cli_uri, tmp_path / "run", "--veto-cpu", "1")
    assert code == 0, output
    records = [json.loads(x) for x in (tmp_path / "run" / "records.jsonl").read_text().split()]
    events = [r.get("event") for r in records if r["kind"] == "driver"]
    assert "register_failed" in events and "registered" not in events
    assert result["adds"] == []  # nothing to observe once registration failed


@pytest.mark.parametrize(("mutation", "rule"), [("swap", "seq.complete"),
                                                ("drop_complete", "hotadd.pair")])
def test_corrupted_record_stream_fails_with_the_right_rule(default_run, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                          mutation: str, rule: str) -> None:
    _, _, run_dir = default_run
    lines = (run_dir / "records.jsonl").read_text().splitlines()
    if mutation == "swap":
        lines[3], lines[4] = lines[4], lines[3]
    else:
        lines = [x for x in lines if not ('"hotadd"' in x and '"complete"' in x
                                          and '"nt_number":3' in x.replace(" ", ""))]
    bad = tmp_path / "records.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    proc = run_hotadd("check", "--profile", "linux", str(bad), "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert rule in {f["rule_id"] for f in json.loads(proc.stdout)["findings"]}


def test_unreachable_guest_is_a_harness_error_naming_the_serial_log(cli_uri: str,
                                                                    tmp_path: Path) -> None:
    # --cold: a booting guest cannot be reachable within 1 s (a restored one can be)
    code, result, output = run(cli_uri, tmp_path / "run", "--ready-timeout", "1", "--cold")
    assert code == 2, output
    assert str(tmp_path / "run" / "serial.log") in output
    assert result["outcome"] == "error" and "serial.log" in result["error"]


def test_impossible_request_fails_before_any_vm(cli_uri: str, tmp_path: Path) -> None:
    code, _, output = run(cli_uri, tmp_path / "run", "--adds", "3")
    assert code == 2
    assert "only 2 vCPU slots are free" in output and "fix:" in output
    assert not (tmp_path / "run" / "domain.xml").exists()


def test_run_dir_is_self_contained(default_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`hotadd check` on a copied run directory reproduces the run's verdict."""
    _, result, run_dir = default_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    proc = run_hotadd("check", "--profile", "linux", str(copy / "records.jsonl"), "--adds", "2",
                      "--boot-cpus", "2", "--guest-count", "4", "--json")
    assert proc.returncode == 0, proc.stdout
    assert json.loads(proc.stdout)["verdict"] == result["verdict"]["verdict"] == "pass"


def test_sigterm_mid_run_tears_everything_down(cli_uri: str, tmp_path: Path) -> None:
    """A CI timeout or scheduler kill (SIGTERM) during a run still leaves no QEMU and no
    scratch behind (cli_uri asserts the QEMU part)."""
    import signal
    import subprocess
    import sys
    import time
    import xml.etree.ElementTree as ET

    from harness import paths

    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", "--libvirt-uri", cli_uri, "--run-dir",
         str(tmp_path / "run")], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    for line in proc.stderr:  # wait until the guest is booting
        if "ready:" in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "interrupted (SIGTERM)" in err
    name = ET.parse(tmp_path / "run" / "domain.xml").findtext("name")
    assert name and name.startswith("hotadd-reference-")
    assert not (paths.scratch_dir() / name).exists()

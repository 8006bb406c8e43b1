"""`hotadd run --load-during-adds` end to end on the reference guest (issue 16 item 4): every
add is plugged, then the probe loads while the guest is still bringing them online. The run
says where each add landed (result.json `load_window`), and the test asserts from it that the
register call really ran with adds on their way, rather than assuming it: which side of the
registration an add lands on is the guest's timing (TCG here), not the harness's choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.processes import run_hotadd, short_root

pytestmark = pytest.mark.vm

ADDS = 3


def test_load_during_adds_sees_every_add_exactly_once(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with short_root() as root:
        proc = run_hotadd("run", "--libvirt-uri", f"qemu:///embed?root={root}", "--run-dir",
                          str(run_dir), "--quiet", "--boot-vcpus", "1", "--adds", str(ADDS),
                          "--load-during-adds")
    result = json.loads((run_dir / "result.json").read_text())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert result["outcome"] == "pass" and result["scenario"]["load_during_adds"] is True
    window = result["load_window"]
    assert window["adds"] == ADDS and window["boot_count"] == 1
    # the window was exercised: the probe registered while at least one add was on its way
    assert window["in_flight_at_load"] >= 1, window
    # every add seen exactly once: in the replay, or as a hot-add (inside the call or after)
    assert window["replayed"] + window["hotadd_in_window"] + window["hotadd_after"] == ADDS
    notifies = [r for r in map(json.loads, (run_dir / "records.jsonl").read_text().splitlines())
                if r["kind"] == "notify"]
    replayed = sorted(r["nt_number"] for r in notifies
                      if r["phase"] == "replay" and r["state"] == "start")
    hot = [r["nt_number"] for r in notifies if r["phase"] == "hotadd" and r["state"] == "start"]
    assert replayed == list(range(1 + window["replayed"]))
    assert sorted(replayed + hot) == list(range(1 + ADDS))  # none twice, none missing
    # the replay (all starts, then all completes) is not interleaved by a hot-add's records
    replay_at = [i for i, r in enumerate(notifies) if r["phase"] == "replay"]
    assert replay_at == list(range(replay_at[0], replay_at[-1] + 1))
    ends = [a["end_state"] for a in result["adds"]]
    assert ends.count("replay") == window["replayed"]
    assert ends.count("complete") == ADDS - window["replayed"]
    assert all(a["ost_status"] == 0 for a in result["adds"])
    assert {c["check_id"]: c["passed"] for c in result["host_checks"]}["guest.online"]

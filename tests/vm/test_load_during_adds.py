"""`hotadd run --load-during-adds` end to end on the reference guest (issue 16 item 4): every
add is plugged, then the probe loads while the guest is still bringing them online. The run
says where each add landed (result.json `load_window`), and the test asserts from it that the
register call really ran with adds on their way, rather than assuming it: which side of the
registration an add lands on is the guest's timing (TCG here), not the harness's choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.attempt import Attempt
from harness.guests import windows_setup
from harness.guests.windows_kind import DRIVER_FILE, WindowsSession, WindowsSettings
from harness.host.domain import Accelerator, Topology
from harness.host.machine import Machine
from harness.pool import Guest, Host
from harness.progress import Progress
from harness.spec import ScenarioSpec
from harness.transport.winrm import WinRMEndpoint, WinRMTransport
from tests.support import windows_golden
from tests.support.processes import run_hotadd, short_root
from tests.support.winrm_double import WinRMDouble

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


def test_the_windows_session_loads_while_the_adds_are_in_flight(
        conn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The Windows path of the option, against the WinRM double only: the Windows guest
    kind's domain (a blank stand-in golden disk: no OS boots, so no _OST or hot-add record
    ever comes) takes both adds through real libvirt, and only then does the session start
    the probe over WinRM. What Windows does in that window is not tested: none of this has
    met Windows."""
    password = "Load-Pa55word!"
    monkeypatch.setenv(windows_setup.PASSWORD_ENV, password)
    kind = windows_golden.prepared_kind(tmp_path)
    hw = windows_golden.hardware(tmp_path)
    spec = ScenarioSpec(guest="windows", topology=Topology(sockets=2, dies=1, cores=4),
                        boot_vcpus=2, adds=2, load_during_adds=True, ack_timeout=3.0,
                        guest_settings=WindowsSettings(image=kind.image, driver=kind.driver))
    host = Host(conn, Accelerator.TCG, {})
    with WinRMDouble(tmp_path / "guest", password=password) as double, \
            Machine.start(conn, kind.domain_spec(hw), hw.scratch) as machine:
        (double.drive_d / DRIVER_FILE).write_bytes(b"MZ driver")
        guest = Guest(spec, kind, host, machine)
        with WinRMTransport(WinRMEndpoint(port=double.port, username="Administrator",
                                          password=password, operation_timeout=2,
                                          read_timeout=5)) as t:
            guest.session = WindowsSession(t)
            attempt = Attempt(guest, spec, hw.run_dir, Progress(quiet=True))
            result = attempt.run()
            assert machine.qemu_view().present == 4
    plugged = [p.t_wall + p.call_seconds for p in attempt.plugged]
    assert len(plugged) == 2 and max(plugged) < double.probe.loaded_at  # plugged, then loaded
    calls = [c.split()[0] for c in double.probe.calls]
    assert calls.index("Get-HotAddProcessorCount") < calls.index("Start-HotAddProbe")
    window = result.load_window
    assert window is not None and window.adds == 2 and window.boot_count == 2
    assert window.in_flight_at_load == 2 and window.load_sent_ms > 0
    # no OS: nothing answered, so the verdict is a failure, and says why
    assert [a.end_state for a in result.adds] == ["none", "none"]
    assert not result.passed and result.verdict is not None
    assert "host.adds" in {f.rule_id for f in result.verdict.findings}

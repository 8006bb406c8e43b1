"""The Windows guest operations (harness.guests.windows_control, WindowsSession) over the
real WinRM transport against the server double, whose ProbeModel stands in for what
vm/windows/hotadd-probe.ps1 does in Windows. Checked here: the probe-control script reaches
the guest whole (staged: it is longer than a command line), the call lines carry the right
parameter values, results are parsed, records are fetched, counts come from a fresh shell."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.clock import ClockSample, map_clock
from harness.errors import GuestCrashed, InputError, TransportError
from harness.guests import windows_control
from harness.guests.base import GuestFacts, ProbeSettings
from harness.guests.windows_kind import DRIVER_FILE, WindowsSession, probe_parameters
from harness.transport.winrm import WinRMEndpoint, WinRMTransport
from tests.support.winrm_double import WinRMDouble

PASSWORD = "Ops-Pa55word!"


@pytest.fixture
def double(tmp_path: Path) -> Iterator[WinRMDouble]:
    with WinRMDouble(tmp_path / "guest", password=PASSWORD) as d:
        (d.drive_d / DRIVER_FILE).write_bytes(b"MZ driver")
        yield d


@pytest.fixture
def transport(double: WinRMDouble) -> Iterator[WinRMTransport]:
    with WinRMTransport(WinRMEndpoint(port=double.port, username="Administrator",
                                      password=PASSWORD, operation_timeout=2,
                                      read_timeout=5)) as t:
        yield t


def creates(double: WinRMDouble) -> int:
    return sum(1 for a, _ in double.requests if a.endswith("/Create"))


def test_session_load_add_unload_cycle(double: WinRMDouble, transport: WinRMTransport) -> None:
    session = WindowsSession(transport)
    assert session.live_records() == ""  # nothing written yet: not an error
    session.load_probe(ProbeSettings(add_existing=True))
    assert session.installed is not None and session.installed.signed_in_guest
    assert session.last_start is not None and session.last_start.started
    assert double.probe.parameters == {"Flags": 1}
    assert double.probe.state == "Running"
    records = [json.loads(line) for line in session.live_records().splitlines()]
    assert [r["event"] for r in records] == ["load", "registered"]
    assert session.processor_count() == 2
    double.probe.logical = 3
    before = creates(double)
    assert session.processor_count() == 3
    assert creates(double) == before + 1, "the count is read in a fresh shell"
    session.unload_probe()
    assert double.probe.state == "Stopped"
    assert session.final_records().splitlines()[-1].endswith('"deregistered"}')
    session.load_probe(ProbeSettings(add_existing=False))
    assert [c.split()[0] for c in double.probe.calls].count("Install-HotAddProbe") == 1
    assert double.probe.parameters == {"Flags": 0}
    assert max(len(c) for c in double.command_lines) <= 8191
    assert all("function Install-HotAddProbe" not in c for c in double.command_lines)


def test_veto_parameters_reach_the_guest(double: WinRMDouble,
                                         transport: WinRMTransport) -> None:
    session = WindowsSession(transport)
    session.load_probe(ProbeSettings(veto_index=3, veto_status=0xC000009A))
    assert double.probe.parameters == {"Flags": 1, "VetoIndex": 3, "VetoStatus": 0xC000009A,
                                       "VetoDuringReplay": 0}
    session.unload_probe()
    double.probe.start_code = 31  # DriverEntry failed: the replay veto's expected outcome
    session.load_probe(ProbeSettings(veto_index=1))
    assert double.probe.parameters["VetoDuringReplay"] == 1
    assert session.last_start is not None and not session.last_start.started
    assert session.last_start.code == 31
    assert [json.loads(x)["event"] for x in session.final_records().splitlines()] == ["load"]


def test_live_records_hold_complete_lines_only(double: WinRMDouble,
                                               transport: WinRMTransport) -> None:
    session = WindowsSession(transport)
    session.load_probe(ProbeSettings())
    path = double.path(r"C:\ProgramData\HotAddProbe\records.jsonl")
    with path.open("a") as f:
        f.write('{"v":1,"seq":3,"t_ns":5,"kind":"noti')  # the writer is mid-line
    assert session.live_records().endswith('"registered"}\n')
    assert session.final_records().endswith('"kind":"noti')


def test_a_crashed_guest_is_reported_as_the_crash(tmp_path: Path) -> None:
    """When the guest stops answering, the machine's check decides: a bugcheck wins."""
    with WinRMDouble(tmp_path / "g", password=PASSWORD) as d:
        port = d.port
    bugcheck = (0x9F, 3, 0, 0, 0)

    def crashed() -> None:
        raise GuestCrashed("guest crashed: bugcheck 0x9F", "screenshot", bugcheck=bugcheck)

    t = WinRMTransport(WinRMEndpoint(port=port, username="Administrator", password=PASSWORD,
                                     operation_timeout=1, read_timeout=2))
    with pytest.raises(GuestCrashed) as err:
        WindowsSession(t, still_alive=crashed).processor_count()
    assert err.value.bugcheck == bugcheck
    with pytest.raises(TransportError, match="connection refused"):
        WindowsSession(t, still_alive=lambda: None).live_records()


def test_probe_parameters_mapping() -> None:
    p = probe_parameters(ProbeSettings(veto_index=2), active=2)
    assert (p.veto_index, p.veto_during_replay) == (2, False)
    assert probe_parameters(ProbeSettings(veto_index=1), active=2).veto_during_replay is True
    assert probe_parameters(ProbeSettings(add_existing=False, veto_index=1),
                            active=2).veto_during_replay is False
    assert probe_parameters(ProbeSettings(), active=None).call() == (
        "Set-HotAddProbeParameters -Flags 1 -VetoIndex -1 -VetoStatus -1 -VetoDuringReplay -1")


def test_preflight_records_vbs_and_the_session_reports_it(
        double: WinRMDouble, transport: WinRMTransport, tmp_path: Path) -> None:
    from harness.result import RunResult
    from harness.spec import ScenarioSpec

    double.probe.vbs_status = 2
    pre = windows_control.preflight(transport)
    assert pre.vbs is windows_control.VbsStatus.RUNNING
    facts = WindowsSession(transport).facts()
    assert facts == GuestFacts(os="Windows Server 2022 Datacenter Evaluation "
                                  "(ServerDatacenterEval)", build=20348, vbs="running",
                               dynamic_processors=True)
    result = RunResult(ScenarioSpec(), tmp_path, "hotadd-x", None, (), (), {}, {}, guest=facts)
    assert result.to_dict()["guest"]["vbs"] == "running"
    assert result.to_dict()["guest_clock"]["method"] == "load"
    mapping = map_clock([ClockSample(sent=10.0, guest_s=8.25, received=10.5)])
    assert mapping is not None
    timed = RunResult(ScenarioSpec(), tmp_path, "hotadd-x", None, (), (), {}, {},
                      clock_offset=mapping.offset, clock=mapping, clock_method="handshake")
    clock = timed.to_dict()["guest_clock"]
    assert (clock["t0_host_wall"], clock["uncertainty_ms"], clock["method"]) == (
        2.0, 250.0, "handshake")
    double.probe.vbs_status = None  # no Device Guard class: unknown, not an error
    assert windows_control.preflight(transport).vbs_status is None


def test_preflight_refuses_builds_before_server_2019(double: WinRMDouble,
                                                     transport: WinRMTransport) -> None:
    double.probe.build = 14393
    with pytest.raises(InputError, match=r"build 14393.*17763.*KMDF 1\.19"):
        windows_control.preflight(transport)
    with pytest.raises(InputError, match="17763"):
        WindowsSession(transport).facts()


def test_clock_handshake_brackets_the_probe_load(double: WinRMDouble,
                                                 transport: WinRMTransport) -> None:
    """One command reads the probe's clock; the host's times around it bound the load."""
    session = WindowsSession(transport)
    session.load_probe(ProbeSettings())
    samples = session.clock_samples(5)
    assert len(samples) == 1, "one handshake whatever the count asked"
    (sample,) = samples
    assert sample.sent <= sample.received
    low, high = sample.bracket
    assert low <= double.probe.loaded_at <= high
    mapping = map_clock(samples)
    assert mapping is not None
    assert abs(mapping.offset - double.probe.loaded_at) <= mapping.uncertainty_s
    commands = len(double.command_lines)
    session.clock_samples(5)
    assert len(double.command_lines) == commands + 1, "one command, no staging"


def test_clock_handshake_without_qpc_falls_back(double: WinRMDouble,
                                                transport: WinRMTransport) -> None:
    double.probe.driver_has_clock = False
    session = WindowsSession(transport)
    session.load_probe(ProbeSettings())
    assert session.clock_samples(5) == []


def test_preflight_and_errors(double: WinRMDouble, transport: WinRMTransport) -> None:
    pre = windows_control.preflight(transport)
    assert pre.build == 20348 and pre.dyn_processor_enabled and pre.test_signing is True
    assert windows_control._utc(pre.last_boot_utc).year == 2026
    with pytest.raises(TransportError, match=r"no drive holds missing\.sys"):
        windows_control.install_driver(transport, "missing.sys")

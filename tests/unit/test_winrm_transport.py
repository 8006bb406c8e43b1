"""WinRMTransport against the WS-Management server double (tests/support/winrm_double.py).

pywinrm does the real SOAP/HTTP; the double answers as the WinRM service would and runs the
commands with a small interpreter (see its docstring). What Windows itself would do with the
PowerShell is not tested here: that needs the lab run (vm/windows/README.md).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.errors import GuestNotReady, TransportError
from harness.transport.winrm import (
    CMD_LINE_LIMIT,
    REDACTED,
    RemoteFileMissing,
    WinRMEndpoint,
    WinRMTransport,
    powershell_plan,
    redact,
)
from tests.support.winrm_double import WinRMDouble, wait_until

PASSWORD = "Lab-Pa55w0rd!only"


def endpoint(double: WinRMDouble, password: str = PASSWORD) -> WinRMEndpoint:
    return WinRMEndpoint(port=double.port, username="Administrator", password=password,
                         operation_timeout=1, read_timeout=3)


@pytest.fixture
def double(tmp_path: Path) -> Iterator[WinRMDouble]:
    with WinRMDouble(tmp_path / "guest", password=PASSWORD) as d:
        yield d


@pytest.fixture
def transport(double: WinRMDouble) -> Iterator[WinRMTransport]:
    with WinRMTransport(endpoint(double)) as t:
        yield t


def assert_no_password(lines: list[str]) -> None:
    encoded = [base64.b64encode(PASSWORD.encode(enc)).decode()[:12] for enc in ("utf-8",
                                                                              "utf-16-le")]
    for line in lines:
        assert PASSWORD not in line
        assert not any(e in line for e in encoded)


def test_commands_exit_codes_and_streams_in_one_reused_shell(
        double: WinRMDouble, transport: WinRMTransport) -> None:
    ok = transport.run("echo hello")
    assert (ok.rc, ok.stdout.strip(), ok.stderr) == (0, "hello", "")
    bad = transport.run("echo to-stderr >&2; exit 7")
    assert bad.rc == 7 and bad.stderr.strip() == "to-stderr" and not bad.ok
    with pytest.raises(TransportError, match="rc=7"):
        bad.check()
    creates = [a for a, _ in double.requests if a.endswith("/Create")]
    assert len(creates) == 1, "one shell must serve every command"
    assert wait_until(lambda: all(not s.commands for s in double.shells.values())), \
        "every finished command is cleaned up with a Signal"
    transport.close()
    assert double.shells == {}, "close() deletes the shell"
    transport.close()  # twice is fine


def test_large_output_arrives_over_several_receives(
        double: WinRMDouble, transport: WinRMTransport) -> None:
    res = transport.run("yes 0123456789abcdef | head -c 1500000; echo tail >&2", timeout=60)
    assert res.rc == 0
    assert len(res.stdout) == 1_500_000 and res.stdout.startswith("0123456789abcdef\n")
    assert res.stderr.strip() == "tail"
    receives = [a for a, _ in double.requests if a.endswith("/Receive")]
    assert len(receives) >= 1_500_000 // (64 * 1024)


def test_short_script_is_one_encoded_command(
        double: WinRMDouble, transport: WinRMTransport) -> None:
    res = transport.run_script("echo short; exit 3")
    assert (res.rc, res.stdout.strip()) == (3, "short")
    assert len(double.command_lines) == 1 and "-EncodedCommand" in double.command_lines[0]


def test_long_script_is_staged_in_chunks_under_the_cmd_limit(
        double: WinRMDouble, transport: WinRMTransport) -> None:
    lines = [f"echo line-{i:05d} ü" for i in range(3000)]  # ~50 KB, non-ASCII on purpose
    script = "\n".join([*lines, "exit 5"])
    assert len(script) > 8 * 1024
    res = transport.run_script(script, timeout=60)
    assert res.rc == 5
    assert res.stdout.splitlines() == [ln[5:] for ln in lines]
    assert max(len(c) for c in double.command_lines) <= CMD_LINE_LIMIT
    assert len(double.command_lines) > 4
    assert any("-File" in c for c in double.command_lines)
    assert list(double.temp.iterdir()) == [], "staged files are removed afterwards"
    assert res.command.startswith("powershell script (")


def test_a_single_oversized_command_fails_as_on_windows(transport: WinRMTransport) -> None:
    res = transport.run("echo " + "x" * CMD_LINE_LIMIT)
    assert res.rc == 1 and "too long" in res.stderr


def test_powershell_clixml_stderr_is_made_readable(transport: WinRMTransport) -> None:
    clixml = ('#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/'
              'powershell/2004/04"><Obj S="progress" RefId="0"><TN RefId="0"><T>System.'
              'Management.Automation.PSCustomObject</T></TN></Obj><S S="Error">Cannot find '
              "path C:/x_x000D__x000A_</S><S S=\"Error\">because it does not exist."
              "_x000D__x000A_</S></Objs>")
    res = transport.run(f"printf '%s' '{clixml}' >&2; exit 1")
    assert res.rc == 1
    assert res.stderr == "Cannot find path C:/x\r\nbecause it does not exist."
    plain = transport.run("echo plain >&2")
    assert plain.stderr.strip() == "plain"


def test_plan_boundaries() -> None:
    small = powershell_plan("x" * 100)
    assert small.steps == () and small.cleanup is None
    big = powershell_plan("x" * 20_000)
    assert all(len(s) <= CMD_LINE_LIMIT for s in (*big.steps, big.run))
    assert big.cleanup is not None


def test_fetch_copies_a_file_in_chunks(double: WinRMDouble, transport: WinRMTransport,
                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.transport.winrm as winrm

    monkeypatch.setattr(winrm, "FETCH_CHUNK", 4096)
    src = double.drive_c / "ProgramData" / "HotAddProbe" / "records.jsonl"
    src.parent.mkdir(parents=True)
    data = bytes(range(256)) * 70 + b'{"v":1}\n'  # binary-safe, not a multiple of the chunk
    src.write_bytes(data)
    local = tmp_path / "out" / "records.jsonl"
    winrm.fetch_by_chunks(transport, r"C:\ProgramData\HotAddProbe\records.jsonl", local, 4096)
    assert local.read_bytes() == data
    assert transport.read_text(r"C:\ProgramData\HotAddProbe\records.jsonl").endswith('{"v":1}\n')
    with pytest.raises(RemoteFileMissing, match=r"no guest file C:\\nope"):
        transport.fetch(r"C:\nope", tmp_path / "x")
    with pytest.raises(TransportError, match=r"cannot read guest file Q:\\x \(rc=1\)"):
        transport.fetch(r"Q:\x", tmp_path / "x")  # a path the double cannot map: a failure


def test_wait_ready_rides_out_refused_connections_and_http_500(tmp_path: Path) -> None:
    seen: list[str] = []
    with WinRMDouble(tmp_path / "g", password=PASSWORD, listen_after=1.0, fail_first=3) as d, \
            WinRMTransport(endpoint(d)) as t:
        took = t.wait_ready(30, on_wait=seen.append)
        assert took >= 1.0
        assert any("connection refused" in s for s in seen)
        assert any("HTTP 500" in s for s in seen)
        assert d.status_log[:3] == [500, 500, 500] and d.status_log[-1] == 200
        assert t.run("echo up").stdout.strip() == "up"


def test_wait_ready_gives_up_with_the_last_fault(tmp_path: Path) -> None:
    with WinRMDouble(tmp_path / "g", password=PASSWORD, fail_first=10_000) as d, \
            WinRMTransport(endpoint(d)) as t, pytest.raises(GuestNotReady) as err:
        t.wait_ready(1.5, hint="read the serial log")
    assert "HTTP 500" in str(err.value) and "serial log" in str(err.value)
    assert "HTTP 500" in t.last_fault


def test_command_timeout_terminates_the_command(
        double: WinRMDouble, transport: WinRMTransport) -> None:
    # the double's command would outlive the test's own budget: only the deadline ends it
    with pytest.raises(TransportError, match="deadline"):
        transport.run("sleep 100000", timeout=2)
    assert any(a.endswith("/Signal") for a, _ in double.requests)
    assert transport.run("echo after").stdout.strip() == "after"


def test_shell_lost_on_the_server_reconnects_once(
        double: WinRMDouble, transport: WinRMTransport) -> None:
    transport.run("true")
    double.shells.clear()  # the guest rebooted / WinRM restarted
    assert transport.run("echo again").stdout.strip() == "again"
    assert len([a for a, _ in double.requests if a.endswith("/Create")]) == 2


def test_password_is_never_shown(double: WinRMDouble, caplog: pytest.LogCaptureFixture,
                                 tmp_path: Path) -> None:
    caplog.set_level(logging.DEBUG)
    t = WinRMTransport(endpoint(double))
    texts = [t.description, repr(t), repr(t.endpoint)]
    t.run("echo x")
    t.run_script("echo y\n" * 2000)
    (double.drive_c / "f").write_text("z")
    t.fetch("C:\\f", tmp_path / "f")
    res = t.run(f"echo {PASSWORD}; exit 2")  # a caller mistake: still masked in what we show
    assert PASSWORD not in res.command and REDACTED in res.command
    with pytest.raises(TransportError) as failed:
        res.check()
    texts.append(str(failed.value))
    t.close()
    wrong = WinRMTransport(endpoint(double, password="Wrong-" + PASSWORD))
    with pytest.raises(TransportError, match="401") as denied:
        wrong.run("echo x")
    texts += [str(denied.value), wrong.last_fault, caplog.text]
    for text in texts:
        assert PASSWORD not in text
    assert redact(f"a {PASSWORD} b", PASSWORD) == f"a {REDACTED} b"
    # every command line the harness itself sent (all but the deliberate echo above)
    assert_no_password([c for c in double.command_lines if "echo " + PASSWORD not in c])

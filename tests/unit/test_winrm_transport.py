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
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from winrm.protocol import Protocol

from harness.errors import GuestNotReady, InputError, TransportError
from harness.transport.winrm import (
    CMD_LINE_LIMIT,
    LINE_BUDGET,
    REDACTED,
    RemoteFileMissing,
    WinRMEndpoint,
    WinRMTransport,
    cmd_argv_line,
    powershell_plan,
    put_plan,
    redact,
)
from tests.support.winrm_double import (
    ADMIN_ENV,
    CMD_PREFIX,
    WinRMDouble,
    cmd_refuses,
    expand,
    wait_until,
)

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
    assert list(double.path("C:\\Windows\\Temp").iterdir()) == [], "staged files are removed"
    assert not any(cmd_refuses(c) for c in double.command_lines)
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


def test_staging_lines_fit_after_cmd_expands_them() -> None:
    """KB 830473: the limit applies after %VAR% expansion and counts `cmd.exe /c `. Lines that
    name %TEMP% (41 characters for Administrator) must not be sized to the raw limit."""
    plan = powershell_plan("Write-Output 'x'\n" * 3000)
    lines = [*plan.steps, plan.run, plan.cleanup or ""]
    assert len(plan.steps) > 3
    for line in lines:
        assert "%" not in line and len(line) <= LINE_BUDGET
        assert len(CMD_PREFIX + expand(line)) <= CMD_LINE_LIMIT - 150, "keep a margin"


def test_the_double_expands_variables_and_counts_the_prefix(transport: WinRMTransport) -> None:
    res = transport.run("echo '%TEMP%' '%UserProfile%' %NOT_DEFINED%")
    assert res.stdout.split() == [ADMIN_ENV["TEMP"], ADMIN_ENV["USERPROFILE"], "%NOT_DEFINED%"]
    room = CMD_LINE_LIMIT - len(CMD_PREFIX) - len("echo ")
    assert transport.run("echo " + "x" * room).rc == 0
    refused = transport.run("echo " + "x" * (room + 1))
    assert (refused.rc, refused.stderr) == (1, "The command line is too long.\r\n")
    # 8185 characters as written, over the limit once %TEMP% is expanded
    grown = transport.run("echo %TEMP%" + "x" * (room - len("%TEMP%")))
    assert grown.rc == 1 and "too long" in grown.stderr


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(size=st.integers(0, 64 * 1024), filler=st.sampled_from(["x", "ü", "€", "'", "%TEMP%"]))
@example(size=0, filler="x")
@example(size=64 * 1024, filler="€")
@example(size=5970, filler="x")  # around where -EncodedCommand stops fitting
@example(size=6100, filler="x")
def test_scripts_of_every_size_run_through_plan_and_double(
        size: int, filler: str, double: WinRMDouble, transport: WinRMTransport) -> None:
    """Any script from 0 to 64 KiB (ASCII, multi-byte, quotes, a %VAR% in the text): every
    line the plan makes is accepted by cmd.exe as the double models it, and the script that
    PowerShell finally reads is the one we sent."""
    head = "echo ran\n"
    body = (filler * size)[: max(0, size - len(head))]
    script = head + "#" + body
    plan = powershell_plan(script)
    assert not any(cmd_refuses(line) for line in (*plan.steps, plan.run, plan.cleanup or ""))
    double.scripts.clear()
    res = transport.run_script(script, timeout=60)
    assert (res.rc, res.stdout.strip()) == (0, "ran")
    assert double.scripts[-1] == script


def test_a_bom_less_staged_script_is_read_as_ansi(double: WinRMDouble,
                                                 transport: WinRMTransport) -> None:
    """Windows PowerShell 5.1 reads a .ps1 without a BOM as ANSI: UTF-8 text turns to
    mojibake. The plan writes a BOM; a script staged without one is read as Windows would."""
    double.path("C:\\Windows\\Temp\\nobom.ps1").write_bytes("echo ü".encode())
    transport.run('powershell.exe -NoProfile -File "C:\\Windows\\Temp\\nobom.ps1"').check()
    assert double.scripts[-1] == "echo Ã¼"


def test_output_uses_the_shells_code_page(double: WinRMDouble) -> None:
    """Without WINRS_CODEPAGE=65001 WinRS encodes output in the OEM code page (437): the
    transport asks for UTF-8, a raw shell without it gets '?' for what 437 lacks."""
    with WinRMTransport(endpoint(double)) as t:
        assert t.run("echo €ü").stdout.strip() == "€ü"
    proto = Protocol(endpoint=double.url, transport="basic", username="Administrator",
                     password=PASSWORD, read_timeout_sec=3, operation_timeout_sec=1,
                     server_cert_validation="ignore", proxy=None)
    shell = proto.open_shell()
    out, _err, rc = proto.get_command_output(shell, proto.run_command(shell, "echo €ü"))
    proto.close_shell(shell)
    assert (rc, out.strip()) == (0, "?\x81".encode("latin-1"))


def test_shell_quota_is_thirty_per_user(double: WinRMDouble) -> None:
    """MaxShellsPerUser 30: a client that forgets shells is refused the 31st."""
    transports = [WinRMTransport(endpoint(double)) for _ in range(31)]
    try:
        for t in transports[:30]:
            t.run("echo open").check()
        with pytest.raises(TransportError, match="maximum number of 30 concurrent shells"):
            transports[30].run("echo one too many")
    finally:
        for t in transports:
            t.close()
    assert double.shells == {}


def test_an_idle_shell_expires_and_the_transport_reconnects_once(tmp_path: Path) -> None:
    """WinRS IdleTimeout (2 h): the shell is gone on the server; the next command notices
    before it started and reconnects once. The double's clock is moved, nothing sleeps."""
    now = [1000.0]
    with WinRMDouble(tmp_path / "g", password=PASSWORD, clock=lambda: now[0]) as double, \
            WinRMTransport(endpoint(double)) as transport:
        transport.run("echo first").check()
        now[0] += 7201
        assert transport.run("echo second").stdout.strip() == "second"
        assert len([a for a, _ in double.requests if a.endswith("/Create")]) == 2


def test_request_envelope_over_500_kb_is_refused(double: WinRMDouble,
                                                 transport: WinRMTransport) -> None:
    """MaxEnvelopeSizekb 500: a command whose request passes it gets Windows' quota fault."""
    with pytest.raises(TransportError, match="MaxEnvelopeSize quota"):
        transport.run("echo " + "x" * 520_000)


def test_faulted_commands_do_not_leak_shells_into_the_quota(double: WinRMDouble,
                                                           transport: WinRMTransport) -> None:
    """A fault drops the transport's shell; the service is alive, so the shell is deleted,
    not left to count against MaxShellsPerUser until WinRS's 2-hour idle timeout."""
    for _ in range(20):
        with pytest.raises(TransportError, match="MaxEnvelopeSize quota"):
            transport.run("echo " + "x" * 520_000)
    assert len(double.shells) <= 1
    assert transport.run("echo still-fine").stdout.strip() == "still-fine"


def test_operation_timeout_above_max_timeoutms_is_refused(double: WinRMDouble) -> None:
    ep = WinRMEndpoint(port=double.port, username="Administrator", password=PASSWORD,
                       operation_timeout=61, read_timeout=70)
    with WinRMTransport(ep) as t, pytest.raises(TransportError, match="MaxTimeoutms"):
        t.run("echo slow")


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


# ---- put and argument vectors (issue 16's seams) ----


@pytest.mark.parametrize("size", [0, 1, 5_999, 6_000, 200_001])
def test_put_copies_binary_files_exactly_under_the_cmd_limit(
        double: WinRMDouble, transport: WinRMTransport, tmp_path: Path, size: int) -> None:
    data = bytes((i * 7919 + size) % 256 for i in range(size))
    local = tmp_path / "driver.sys"
    local.write_bytes(data)
    target = "C:\\hotadd\\drivers\\My Driver.sys"
    double.path(target).parent.mkdir(parents=True, exist_ok=True)
    double.path(target).write_bytes(b"an older, longer file that must be replaced whole" * 9)
    transport.put(local, target)
    assert double.path(target).read_bytes() == data
    assert not cmd_refuses_any(double), "every line of the upload fits cmd.exe"
    assert list(double.path("C:\\Windows\\Temp").iterdir()) == [], "staged files are removed"
    assert list(double.path("C:\\hotadd\\drivers").iterdir()) == [double.path(target)]


def cmd_refuses_any(double: WinRMDouble) -> bool:
    return any(cmd_refuses(line) for line in double.command_lines)


def test_put_plan_lines_stay_within_the_budget_and_name_no_variable() -> None:
    plan = put_plan(bytes(range(256)) * 100, "C:\\hotadd\\x.sys")
    assert len(plan) > 3
    assert all(len(line) <= LINE_BUDGET and "%" not in line for line in plan)


def test_put_refuses_a_missing_file_and_a_path_cmd_would_expand(
        transport: WinRMTransport, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        transport.put(tmp_path / "missing.sys", "C:\\hotadd\\x.sys")
    (tmp_path / "a.sys").write_bytes(b"x")
    with pytest.raises(InputError, match="holds %"):
        transport.put(tmp_path / "a.sys", "C:\\%TEMP%\\x.sys")


def test_argv_elements_reach_the_program_intact(transport: WinRMTransport) -> None:
    # each element double-quoted; the double runs the line with sh, which splits these
    # quoted words as CommandLineToArgvW does for a Windows program
    argv = ["echo", "a b", "x&y", "<in>", "^c", "(p)"]
    assert transport.argv_line(argv) == '"echo" "a b" "x&y" "<in>" "^c" "(p)"'
    assert transport.run_argv(argv).stdout.strip() == "a b x&y <in> ^c (p)"


@pytest.mark.parametrize("arg", ['say "hi"', "100%", "two\nlines", "cr\r"])
def test_argv_refuses_what_cmd_would_act_on(transport: WinRMTransport, arg: str) -> None:
    with pytest.raises(InputError, match="acts on even inside quotes"):
        transport.argv_line(["prog.exe", arg])


def test_argv_trailing_backslashes_are_doubled_before_the_closing_quote() -> None:
    assert cmd_argv_line(["sc.exe", "C:\\dir\\"]) == '"sc.exe" "C:\\dir\\\\"'
    assert cmd_argv_line(["x", "a\\b"]) == '"x" "a\\b"'


def test_argv_line_longer_than_cmd_takes_is_refused() -> None:
    with pytest.raises(InputError, match="8191-character limit"):
        cmd_argv_line(["x"] + ["y" * 1000] * 9)


def test_an_empty_argv_is_refused(transport: WinRMTransport) -> None:
    with pytest.raises(InputError, match="empty argument vector"):
        transport.run_argv([])

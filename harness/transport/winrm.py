"""WinRM transport (pywinrm) for Windows guests reached through a 127.0.0.1 forward.

One WS-Management shell is opened lazily and reused for every command (pytest-testinfra's
WinRM backend opening a shell per command and never deleting it is what we avoid); `close()`
deletes it. `run()` runs a command line in that shell (cmd.exe, the WinRM default, as for
Windows OpenSSH), `run_script()` runs PowerShell of any length: short scripts go as
`-EncodedCommand`, longer ones are staged into a file under a short fixed path in chunks that
each stay well under cmd.exe's 8191-character limit, then run with `-File`. The staging and
the chunked base64 `fetch` are plain command lines, so `run_powershell()` and
`fetch_by_chunks()` also serve Windows over SSH (whose default shell is cmd.exe too).

Authentication: HTTP Basic over unencrypted HTTP, for a *lab* guest whose WinRM port is only
forwarded to 127.0.0.1 (the provisioning script enables exactly that); NTLM (with pywinrm's
message encryption) is selectable. The password is kept out of `description`, `repr`,
command lines shown to people, log lines and every exception text (`redact`).
"""

from __future__ import annotations

import base64
import contextlib
import enum
import ipaddress
import logging
import re
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, TypeVar

import requests
from winrm.exceptions import (
    InvalidCredentialsError,
    WinRMError,
    WinRMOperationTimeoutError,
    WinRMTransportError,
    WSManFaultError,
)
from winrm.protocol import Protocol

from harness.errors import InputError, TransportError
from harness.transport.base import CommandResult, Transport

log = logging.getLogger(__name__)
T = TypeVar("T")

#: cmd.exe refuses a longer command line ("The command line is too long."), counted *after*
#: environment variables are expanded: Microsoft KB 830473, "Command prompt (Cmd.exe)
#: command-line string limitation", https://learn.microsoft.com/en-us/troubleshoot/
#: windows-client/shell-experience/command-line-string-limitation
CMD_LINE_LIMIT = 8191
#: WinRS (the WinRM cmd shell) and Windows OpenSSH run each command as `cmd.exe /c LINE`; the
#: KB counts that prefix too.
CMD_PREFIX = "cmd.exe /c "
#: The most any command line the harness generates may hold: the limit less the prefix, less
#: a margin. Generated lines also never name a %VARIABLE%, so expansion cannot lengthen them.
LINE_BUDGET = 8000
#: Where long scripts are staged: a literal path (not %TEMP%, which for Administrator expands
#: to 41 characters), present on every Windows and writable by administrators.
STAGE_DIR = "C:\\Windows\\Temp"
#: Raw bytes per fetch round trip (base64 makes it 4/3 larger on the wire).
FETCH_CHUNK = 512 * 1024
#: What `run_script` and the staging commands run: no profile, no prompts, any script allowed.
POWERSHELL = "powershell.exe -NoLogo -NoProfile -NonInteractive -ExecutionPolicy Bypass"
REDACTED = "********"


class WinRMAuth(enum.Enum):
    """How pywinrm authenticates (its `transport=` argument)."""

    BASIC = "basic"  # lab only: needs AllowUnencrypted + Basic on the guest (loopback forward)
    NTLM = "ntlm"  # enabled on Windows by default; pywinrm encrypts the messages


@dataclass(frozen=True)
class WinRMEndpoint:
    """Where and as whom to connect. The password never appears in repr()."""

    port: int
    username: str
    password: str = field(repr=False)
    host: str = "127.0.0.1"
    auth: WinRMAuth = WinRMAuth.BASIC
    operation_timeout: int = 20  # WS-Man OperationTimeout of one Receive
    read_timeout: int = 30  # HTTP read timeout; pywinrm demands it exceeds the above

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise InputError(f"WinRM port {self.port} is out of range",
                             "give the 127.0.0.1 forward's port, 1-65535")
        if not _is_loopback(self.host):
            raise InputError(f"WinRM host {self.host} is not a loopback address",
                             "reach the guest through its forward on 127.0.0.1 (hotadd never "
                             "leaves loopback)")
        if self.read_timeout <= self.operation_timeout:
            raise InputError(
                f"WinRM read timeout {self.read_timeout}s must exceed the operation timeout "
                f"{self.operation_timeout}s (pywinrm refuses otherwise)",
                "raise read_timeout above operation_timeout")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/wsman"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # another name: it could resolve anywhere
        return False


def redact(text: str, secret: str) -> str:
    """`text` with every occurrence of `secret` (and its base64 forms) masked."""
    if not secret:
        return text
    out = text.replace(secret, REDACTED)
    for enc in ("utf-8", "utf-16-le"):
        b64 = base64.b64encode(secret.encode(enc)).decode("ascii").rstrip("=")
        if len(b64) >= 8:
            out = out.replace(b64[:-2], REDACTED)  # the tail depends on what follows
    return out


def clean_clixml(stderr: str) -> str:
    """PowerShell run by a remote shell writes its error (and progress) streams to stderr as
    CLIXML ("#< CLIXML" then <Objs>); keep the error text people can read."""
    head, _, body = stderr.partition("\n")
    if head.strip() != "#< CLIXML":
        return stderr
    try:
        root = ET.fromstring(body.strip())
    except ET.ParseError:
        return stderr
    text = "".join(el.text or "" for el in root.iter()
                   if el.tag.endswith("}S") and el.get("S") == "Error")
    return re.sub(r"_x([0-9A-Fa-f]{4})_", lambda m: chr(int(m[1], 16)), text).strip()


# ---- PowerShell delivery: plain cmd.exe command lines, shared with Windows over SSH ----


def encoded_command(script: str) -> str:
    """`powershell.exe ... -EncodedCommand` for `script` (UTF-16LE base64, as PowerShell wants)."""
    b64 = base64.b64encode(script.encode("utf-16-le")).decode("ascii")
    return f"{POWERSHELL} -EncodedCommand {b64}"


@dataclass(frozen=True)
class PowerShellPlan:
    """The command lines that run one script: `steps` in order, then `run`, then `cleanup`."""

    steps: tuple[str, ...]
    run: str
    cleanup: str | None


def _stage_decoder(b64: str, ps1: str) -> str:
    """PowerShell that turns `b64` (UTF-8 script, base64 lines) into `ps1`."""
    return (
        "$ErrorActionPreference='Stop';"
        f"$b={ps_quote(b64)};$p={ps_quote(ps1)};"
        "$t=[Text.Encoding]::UTF8.GetString([Convert]::FromBase64String("
        "((Get-Content -Raw -LiteralPath $b) -replace '\\s','')));"
        "[IO.File]::WriteAllText($p,$t,(New-Object Text.UTF8Encoding $true));"
        "Remove-Item -LiteralPath $b"
    )


class CommandLineTooLong(ValueError):
    """A generated command line would break cmd.exe's limit (a harness bug, not the guest's)."""


def check_line(line: str, budget: int = LINE_BUDGET) -> str:
    """`line` if cmd.exe will take it whatever the guest's environment holds: within `budget`
    and naming no %VARIABLE% (whose expansion could push it over CMD_LINE_LIMIT)."""
    if len(line) > budget or "%" in line:
        raise CommandLineTooLong(f"generated command line of {len(line)} characters "
                                 f"(budget {budget}{', names a %VARIABLE%' if '%' in line else ''})"
                                 f": {line[:80]}...")
    return line


def powershell_plan(script: str, *, limit: int = LINE_BUDGET) -> PowerShellPlan:
    """How to run `script` through cmd.exe without exceeding its command-line limit.

    Short scripts: one `-EncodedCommand`. Longer: base64 of the UTF-8 text appended to
    STAGE_DIR\\hotadd-<id>.b64 with `>>file echo CHUNK` (redirection first, so a chunk ending in
    a digit is never read as a handle number), decoded to a .ps1 with a BOM (Windows PowerShell
    5.1 reads BOM-less files as ANSI), run with `-File` so `exit N` becomes the exit code.
    Every line is at most `limit` characters and names no variable (`check_line`).
    """
    single = encoded_command(script)
    if len(single) <= limit:
        return PowerShellPlan(steps=(), run=check_line(single, limit), cleanup=None)
    stem = f"{STAGE_DIR}\\hotadd-{uuid.uuid4().hex[:12]}"
    b64, ps1 = f"{stem}.b64", f"{stem}.ps1"
    target = f'>>"{b64}" echo '
    room = (limit - len(target)) // 4 * 4
    data = base64.b64encode(script.encode("utf-8")).decode("ascii")
    steps = [f'if exist "{b64}" del /f /q "{b64}"']
    steps += [target + data[i : i + room] for i in range(0, len(data), room)]
    steps.append(encoded_command(_stage_decoder(b64, ps1)))
    plan = PowerShellPlan(steps=tuple(steps), run=f'{POWERSHELL} -File "{ps1}"',
                          cleanup=f'del /f /q "{ps1}"')
    for line in (*plan.steps, plan.run, plan.cleanup or ""):
        check_line(line, limit)
    return plan


def ps_quote(text: str) -> str:
    """A PowerShell single-quoted string literal."""
    return "'" + text.replace("'", "''") + "'"


#: Exit code of the fetch script when the file does not exist.
MISSING_FILE_RC = 44


class RemoteFileMissing(TransportError):
    """The guest file to fetch does not exist."""


def fetch_chunk_script(remote_path: str, offset: int, count: int) -> str:
    """PowerShell printing base64 of `count` bytes at `offset` of a guest file (shared read:
    the driver may still be appending to it); exit MISSING_FILE_RC if there is no such file."""
    path = ps_quote(remote_path)
    return (
        "$ErrorActionPreference='Stop';"
        f"if(-not [IO.File]::Exists({path})){{exit {MISSING_FILE_RC}}};"
        f"$f=[IO.File]::Open({path},'Open','Read','ReadWrite');"
        f"try{{[void]$f.Seek({offset},'Begin');$b=New-Object byte[] {count};"
        f"$n=$f.Read($b,0,{count});[Console]::Out.Write([Convert]::ToBase64String($b,0,$n))}}"
        "finally{$f.Close()}"
    )


# ---- the transport ----

_OPERATION_TIMEOUT_FAULT = 2150858793


class WinRMTransport(Transport):
    """Commands and PowerShell in a Windows guest over WinRM, one shell per transport."""

    def __init__(self, endpoint: WinRMEndpoint) -> None:
        self.endpoint = endpoint
        self.description = f"winrm {endpoint.username}@{endpoint.host}:{endpoint.port}"
        self._protocol: Protocol | None = None
        self._shell_id: str | None = None
        self.last_fault: str = ""

    def __repr__(self) -> str:
        return f"WinRMTransport({self.description!r})"

    # -- connection --

    def _connect(self) -> tuple[Protocol, str]:
        if self._protocol is not None and self._shell_id is not None:
            return self._protocol, self._shell_id
        ep = self.endpoint
        protocol = Protocol(
            endpoint=ep.url,
            transport=ep.auth.value,
            username=ep.username,
            password=ep.password,
            server_cert_validation="ignore",
            read_timeout_sec=ep.read_timeout,
            operation_timeout_sec=ep.operation_timeout,
            proxy=None,  # never send loopback traffic through an environment proxy
        )
        shell_id = self._call(lambda: protocol.open_shell(codepage=65001), "open shell")
        log.debug("%s: opened shell %s", self.description, shell_id)
        self._protocol, self._shell_id = protocol, shell_id
        return protocol, shell_id

    def _drop(self, delete: bool = False) -> None:
        """Forget the shell; with `delete` (the service answered, so it is alive) try to
        delete it first: a forgotten shell lives on until WinRS's idle timeout (2 h) and
        counts against MaxShellsPerUser (30), after which no shell opens at all."""
        protocol, shell_id = self._protocol, self._shell_id
        self._protocol, self._shell_id = None, None
        if protocol is None:
            return
        if delete and shell_id is not None:
            with contextlib.suppress(Exception):
                protocol.close_shell(shell_id)
        protocol.transport.close_session()

    def _call(self, fn: Callable[[], T], what: str) -> T:
        """Run one pywinrm call; turn every failure into a redacted TransportError."""
        try:
            return fn()
        except WinRMOperationTimeoutError:
            raise
        except InvalidCredentialsError:
            self._fail(what, "HTTP 401: credentials rejected",
                       "check the guest's user name and password; WinRMAuth.BASIC needs Basic "
                       "auth enabled in the guest (vm/windows/provision.ps1 does it)")
        except WSManFaultError as exc:
            code = f" wsman code {exc.wsman_fault_code}" if exc.wsman_fault_code else ""
            self._fail(what, f"WinRM fault (HTTP {exc.code}{code}): {exc.reason}",
                       service_answered=True)
        except WinRMTransportError as exc:
            self._fail(what, f"HTTP {exc.code} from the WinRM service"
                       + (f": {exc.response_text[:300]}" if exc.response_text else ""),
                       service_answered=True)
        except requests.exceptions.ConnectionError as exc:
            self._fail(what, f"connection refused or reset ({type(exc).__name__})")
        except requests.exceptions.Timeout:
            self._fail(what, f"no answer within {self.endpoint.read_timeout}s (HTTP read timeout)")
        except (WinRMError, requests.exceptions.RequestException) as exc:
            self._fail(what, f"{type(exc).__name__}: {exc}")
        raise AssertionError("unreachable")

    def _fail(self, what: str, fault: str, fix: str | None = None,
              service_answered: bool = False) -> NoReturn:
        self.last_fault = redact(fault, self.endpoint.password)
        self._drop(delete=service_answered)
        raise TransportError(
            f"{self.description}: {what} failed: {self.last_fault}",
            fix or "check that the guest is up and WinRM listens on the forwarded port "
                   "(the serial log and a screenshot show how far it booted)",
        ) from None

    # -- commands --

    def _execute(self, command: str, timeout: float, shown: str) -> CommandResult:
        """Run one cmd.exe command line; reconnect once if the shell died before it started."""
        t0 = time.monotonic()
        for attempt in (1, 2):
            protocol, shell_id = self._connect()
            try:
                command_id = self._call(_bind(protocol.run_command, shell_id, command),
                                        "start command")
                break
            except TransportError:
                if attempt == 2:
                    raise
                log.debug("%s: shell lost, reconnecting once", self.description)
        out, err, rc = self._collect(protocol, shell_id, command_id, t0 + timeout, shown)
        return CommandResult(
            command=shown, rc=rc,
            stdout=out.decode("utf-8", errors="replace"),
            stderr=clean_clixml(err.decode("utf-8", errors="replace")),
            elapsed=time.monotonic() - t0,
        )

    def _collect(self, protocol: Protocol, shell_id: str, command_id: str,
                 deadline: float, shown: str) -> tuple[bytes, bytes, int]:
        """Receive until the command is done or the deadline passes (then terminate it)."""
        out: list[bytes] = []
        err: list[bytes] = []
        while True:
            if self.liveness is not None:
                self.liveness()  # a bugcheck (crash MSRs) ends the wait between receives
            if time.monotonic() > deadline:
                with contextlib.suppress(TransportError):
                    self._call(lambda: protocol.cleanup_command(shell_id, command_id), "stop")
                self.last_fault = "command timed out"
                raise TransportError(
                    f"{self.description}: command still running at its deadline, "
                    f"terminated: {shown}",
                    "raise the timeout, or look at what the guest is doing (screenshot)",
                )
            try:
                o, e, rc, done = self._call(
                    lambda: protocol.get_command_output_raw(shell_id, command_id), "receive")
            except WinRMOperationTimeoutError:
                continue  # no output during OperationTimeout: normal for long commands
            out.append(o)
            err.append(e)
            if done:
                break
        try:
            self._call(lambda: protocol.cleanup_command(shell_id, command_id), "clean up")
        except TransportError:
            log.debug("%s: cleanup of a finished command failed", self.description)
        return b"".join(out), b"".join(err), rc

    def run(self, command: str, timeout: float = 120.0) -> CommandResult:
        shown = redact(command, self.endpoint.password)
        log.debug("%s: run %s", self.description, shown[:200])
        return self._execute(command, timeout, shown)

    def run_script(self, script: str, timeout: float = 300.0) -> CommandResult:
        """Run a PowerShell script of any length; rc is its exit code."""
        return run_powershell(self, script, timeout,
                              shown=redact(_first_line(script), self.endpoint.password))

    def fetch(self, remote_path: str, local_path: Path) -> None:
        fetch_by_chunks(self, remote_path, local_path)

    def argv_line(self, argv: Sequence[str]) -> str:
        return cmd_argv_line(argv)

    def put(self, local_path: Path, remote_path: str, timeout: float = 300.0) -> None:
        put_by_chunks(self, local_path, remote_path, timeout)

    def probe(self) -> None:
        self.run("echo hotadd-ready", timeout=max(10.0, self.endpoint.read_timeout)).check()

    def close(self) -> None:
        protocol, shell_id = self._protocol, self._shell_id
        self._protocol, self._shell_id = None, None
        if protocol is None or shell_id is None:
            return
        try:
            protocol.close_shell(shell_id)
        except Exception as exc:  # the guest may be gone already: nothing left to release
            log.debug("%s: delete shell failed: %s", self.description,
                      redact(type(exc).__name__, self.endpoint.password))
            protocol.transport.close_session()



def _bind(fn: Callable[[str, str], str], a: str, b: str) -> Callable[[], str]:
    return lambda: fn(a, b)


def _first_line(script: str) -> str:
    lines = [ln.strip() for ln in script.strip().splitlines() if ln.strip()]
    head = lines[0] if lines else ""
    return f"powershell script ({len(script)} chars): {head[:80]}"


def run_powershell(transport: Transport, script: str, timeout: float = 300.0,
                   *, shown: str | None = None) -> CommandResult:
    """Run PowerShell of any length through `transport.run` (cmd.exe on the guest side).

    Works for WinRM and for Windows OpenSSH (whose default shell is cmd.exe). The result's
    rc/stdout/stderr are those of the script itself; staging failures raise TransportError.
    """
    t0 = time.monotonic()
    plan = powershell_plan(script)
    deadline = t0 + timeout
    for step in plan.steps:
        transport.run(step, timeout=max(1.0, deadline - time.monotonic())).check()
    try:
        res = transport.run(plan.run, timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if plan.cleanup is not None:
            try:
                transport.run(plan.cleanup, timeout=30.0)
            except TransportError:
                log.debug("could not delete a staged script")
    return CommandResult(command=shown or _first_line(script), rc=res.rc, stdout=res.stdout,
                         stderr=clean_clixml(res.stderr), elapsed=time.monotonic() - t0)


def fetch_by_chunks(transport: Transport, remote_path: str, local_path: Path,
                    chunk: int = FETCH_CHUNK) -> None:
    """Copy a guest file out as base64 text, `chunk` bytes per round trip."""
    local_path.parent.mkdir(parents=True, exist_ok=True)
    offset = 0
    with open(local_path, "wb") as out:
        while True:
            res = transport.run(encoded_command(fetch_chunk_script(remote_path, offset, chunk)))
            if res.rc == MISSING_FILE_RC:
                raise RemoteFileMissing(f"{transport.description}: no guest file {remote_path}",
                                        "check the path (did the probe write its records?)")
            if res.rc != 0:
                raise TransportError(
                    f"{transport.description}: cannot read guest file {remote_path} "
                    f"(rc={res.rc}): {res.stderr.strip()[-500:]}",
                    "check that the path exists in the guest (e.g. the probe wrote records)",
                )
            text = re.sub(r"\s", "", res.stdout)
            data = base64.b64decode(text, validate=True)
            out.write(data)
            offset += len(data)
            if len(data) < chunk:
                return


# ---- argument vectors and file uploads through cmd.exe ----

#: Characters cmd.exe acts on even inside double quotes (`%VAR%` expansion; `"` would end the
#: quoting and expose `&|<>^`), and line ends, which end the command. "cmd /?" and "Command
#: shell overview", https://learn.microsoft.com/en-us/windows-server/administration/
#: windows-commands/cmd
_CMD_UNQUOTABLE = ('"', "%", "\r", "\n", "\0")


def _msvcrt_quote(arg: str) -> str:
    """`arg` double-quoted as CommandLineToArgvW and the MSVC runtime split it back: backslashes
    are literal except before a quote, so a trailing run is doubled before the closing quote
    ("Parsing C++ command-line arguments", https://learn.microsoft.com/en-us/cpp/cpp/
    main-function-command-line-args#parsing-c-command-line-arguments)."""
    doubled = "\\" * (len(arg) - len(arg.rstrip("\\")))
    return f'"{arg}{doubled}"'


def cmd_argv_line(argv: Sequence[str], budget: int = LINE_BUDGET) -> str:
    """A cmd.exe command line running `argv`: every element in double quotes (inside them
    cmd.exe leaves `&|<>^()` and spaces alone). An element holding a character cmd.exe would
    still act on is refused (InputError) rather than passed altered; the line keeps to the
    same budget as every generated line (`check_line`)."""
    for arg in argv:
        bad = sorted({c for c in _CMD_UNQUOTABLE if c in arg})
        if bad:
            raise InputError(
                f"argument {arg[:60]!r} holds {', '.join(map(repr, bad))}, which cmd.exe acts "
                "on even inside quotes", "pass the value without those characters (e.g. in a "
                "file copied in with put)")
    line = " ".join(_msvcrt_quote(a) for a in argv)
    try:
        return check_line(line, budget)
    except CommandLineTooLong as exc:
        raise InputError(f"the command line would be {len(line)} characters, beyond cmd.exe's "
                         f"{CMD_LINE_LIMIT}-character limit: {exc}",
                         "pass fewer or shorter arguments (e.g. in a file copied in with "
                         "put)") from None


def put_decoder_script(b64: str, target: str) -> str:
    """PowerShell that writes the bytes in `b64` (base64 lines; '' for no bytes) to `target`
    through a temporary file beside it, renamed over it at the end, and removes `b64`."""
    return (
        "$ErrorActionPreference='Stop';"
        f"$src={ps_quote(b64)};$dst={ps_quote(target)};$tmp=$dst+'.hotadd-put';$d=[byte[]]@();"
        "if($src){$d=[Convert]::FromBase64String("
        "((Get-Content -Raw -LiteralPath $src) -replace '\\s',''));Remove-Item -LiteralPath $src};"
        "[IO.Directory]::CreateDirectory([IO.Path]::GetDirectoryName($dst))|Out-Null;"
        "[IO.File]::WriteAllBytes($tmp,$d);"
        "Move-Item -Force -LiteralPath $tmp -Destination $dst"
    )


def put_plan(data: bytes, target: str, *, limit: int = LINE_BUDGET) -> tuple[str, ...]:
    """The command lines that copy `data` to guest file `target`: base64 appended in chunks to
    STAGE_DIR\\hotadd-put-<id>.b64 (as `powershell_plan` stages a script), then decoded. Every
    line within `limit` and naming no %VARIABLE% (`check_line`)."""
    if not data:
        return (check_line(encoded_command(put_decoder_script("", target)), limit),)
    b64 = f"{STAGE_DIR}\\hotadd-put-{uuid.uuid4().hex[:12]}.b64"
    head = f'>>"{b64}" echo '
    room = (limit - len(head)) // 4 * 4
    text = base64.b64encode(data).decode("ascii")
    lines = [f'if exist "{b64}" del /f /q "{b64}"']
    lines += [head + text[i : i + room] for i in range(0, len(text), room)]
    lines.append(encoded_command(put_decoder_script(b64, target)))
    return tuple(check_line(line, limit) for line in lines)


def put_by_chunks(transport: Transport, local_path: Path, remote_path: str,
                  timeout: float = 300.0) -> None:
    """Copy a host file into a Windows guest through cmd.exe command lines alone (WinRM, or
    Windows OpenSSH): `put_plan`, each line checked."""
    try:
        data = local_path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {local_path}: {exc.strerror or exc}",
                         "give a readable file") from None
    if "%" in remote_path or '"' in remote_path:
        raise InputError(f"guest path {remote_path!r} holds % or a quote",
                         "copy to a plain absolute path, e.g. C:\\hotadd\\x.sys")
    deadline = time.monotonic() + timeout
    for line in put_plan(data, remote_path):
        res = transport.run(line, timeout=max(1.0, deadline - time.monotonic()))
        if not res.ok:
            raise TransportError(
                f"{transport.description}: copying {local_path.name} to {remote_path} failed "
                f"(rc={res.rc}): {res.stderr.strip()[-500:]}",
                "check that the guest's disk has room and the directory is writable")

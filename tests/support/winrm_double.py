"""A WS-Management shell-protocol server double: the Windows side of WinRM, for tests.

We cannot run Windows here, so this double stands at the boundary: a real HTTP server on
127.0.0.1 that answers the SOAP envelopes pywinrm sends (Create shell, Command, Receive,
Signal, Delete; HTTP Basic auth) the way the WinRM service does: command and shell ids,
base64 stream chunks over as many Receive responses as the output needs, CommandState
Running/Done with ExitCode, the OperationTimeout fault (2150858793) while a command is silent,
401 for bad credentials. It can refuse connections for a while (nothing listens on the port
yet) and answer HTTP 500 to the first N requests, as a booting guest does.

Each command line first goes through what cmd.exe does to it (WinRS runs `cmd.exe /c LINE`):
`%VAR%` is expanded from Administrator's environment (`ADMIN_ENV`: %TEMP% is
C:\\Users\\Administrator\\AppData\\Local\\Temp), and a line whose `cmd.exe /c ` + expansion
passes 8191 characters fails with cmd's own message and exit code 1 (Microsoft KB 830473).
Then a small deterministic interpreter, not Windows, executes it:
- the cmd.exe forms the harness emits (`>>"FILE" echo DATA`, `if exist F del`, `del /f /q F`)
  act on a scratch directory (drives `C:\\` and `D:\\` are mapped into it);
- `powershell.exe ... -EncodedCommand B64` is decoded (UTF-16LE) and its intent looked up in a
  tiny table (the staging decoder and the fetch-chunk reader, matched by regex; a script that
  is vm/windows/hotadd-probe.ps1 plus a call line goes to `ProbeModel`, a model of what those
  functions do to the guest; the upload decoder of `put` writes the bytes); any other script
  text runs as portable `sh` script text;
- `"sc.exe" ...` and `"reg.exe" ...` (argument vectors, split as CommandLineToArgvW does) go
  to `ServiceModel`, a model of what they do to the guest's kernel services and registry;
- `powershell.exe ... -File F` (a staged long script) is treated like the decoded text above,
  read as Windows PowerShell 5.1 reads it: UTF-8 only with a BOM, else ANSI (cp1252);
- any other command line runs with `sh -c`.

Limits of a default WinRM service, enforced as Windows does ("Installation and configuration
for Windows Remote Management", https://learn.microsoft.com/en-us/windows/win32/winrm/
installation-and-configuration-for-windows-remote-management; MS-WSMV 2.2.4.42 WinrsType):
- MaxEnvelopeSizekb 500: a larger request gets the 0x80338111 fault; responses stay within the
  MaxEnvelopeSize the client asked for (Windows splits output over more Receives);
- MaxShellsPerUser 30: the 31st open shell gets the "maximum number of 30 concurrent shells"
  fault (a client that drops shells without deleting them runs into it);
- MaxTimeoutms 60000: an OperationTimeout above it is refused;
- WinRS IdleTimeout 7200000 ms: a shell unused that long is gone (shell-not-found fault),
  measured on `clock`, which tests may replace to move time on without sleeping;
- the shell's code page (WINRS_CODEPAGE, else the OEM code page 437) encodes the output.
Not modelled, and why: MaxConcurrentOperationsPerUser 1500 and MaxConcurrentUsers 10 (the
harness runs one operation at a time as one user, far below both); MaxProcessesPerShell 25 and
MaxMemoryPerShellMB (per-process resources of the guest, not of the protocol); exit codes above
255 (commands run by `sh` cannot produce them; ProbeModel results carry any int).
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from xml.sax.saxutils import escape

from harness.guests import windows_control

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
}
SHELL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
CMD_LINE_LIMIT = 8191  # KB 830473, after %VAR% expansion, counting "cmd.exe /c "
CMD_PREFIX = "cmd.exe /c "
TOO_LONG = b"The command line is too long.\r\n"
STREAM_CHUNK = 64 * 1024  # at most this many bytes per stream per Receive response
OPERATION_TIMEOUT_FAULT = 2150858793
SHELL_NOT_FOUND_FAULT = 2150858843
SHELL_QUOTA_FAULT = 2150859173
#: a Receive for an unknown CommandId: a fault, as Windows gives; its exact code is not known
#: to us, so the shell-not-found code stands in (the transport treats both alike)
COMMAND_NOT_FOUND_FAULT = 2150858843
ENVELOPE_QUOTA_FAULT = 2150859025  # 0x80338111
MAX_ENVELOPE_KB = 500
MAX_SHELLS_PER_USER = 30
MAX_TIMEOUT_MS = 60_000
IDLE_TIMEOUT_S = 7200.0
#: What cmd.exe sees in a WinRM session of the built-in Administrator (profile paths of a
#: Windows Server install); names are case-insensitive as on Windows.
ADMIN_ENV = {
    "ALLUSERSPROFILE": "C:\\ProgramData",
    "APPDATA": "C:\\Users\\Administrator\\AppData\\Roaming",
    "COMPUTERNAME": "HOTADD-WIN",
    "ComSpec": "C:\\Windows\\system32\\cmd.exe",
    "HOMEDRIVE": "C:",
    "HOMEPATH": "\\Users\\Administrator",
    "LOCALAPPDATA": "C:\\Users\\Administrator\\AppData\\Local",
    "ProgramData": "C:\\ProgramData",
    "ProgramFiles": "C:\\Program Files",
    "SystemDrive": "C:",
    "SystemRoot": "C:\\Windows",
    "TEMP": "C:\\Users\\Administrator\\AppData\\Local\\Temp",
    "TMP": "C:\\Users\\Administrator\\AppData\\Local\\Temp",
    "USERDOMAIN": "HOTADD-WIN",
    "USERNAME": "Administrator",
    "USERPROFILE": "C:\\Users\\Administrator",
    "windir": "C:\\Windows",
}


def expand(line: str, env: dict[str, str] = ADMIN_ENV) -> str:
    """cmd.exe's %VAR% expansion of an interactive (/c) command line: a defined name is
    replaced, an undefined one is left as written (unlike in a batch file)."""
    names = {k.upper(): v for k, v in env.items()}
    return re.sub(r"%([^%\r\n]+)%",
                  lambda m: names.get(m[1].upper(), m[0]), line)


def cmd_refuses(line: str, env: dict[str, str] = ADMIN_ENV) -> bool:
    """Would `cmd.exe /c LINE` be refused as too long (KB 830473)?"""
    return len(CMD_PREFIX + expand(line, env)) > CMD_LINE_LIMIT


@dataclass
class Command:
    """One command's output as it is produced, and its exit code once known."""

    line: str
    codepage: int = 65001  # the shell's: the interpreter writes UTF-8, Receive re-encodes
    out: bytearray = field(default_factory=bytearray)
    err: bytearray = field(default_factory=bytearray)
    rc: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    receives: int = 0
    terminated: bool = False
    cond: threading.Condition = field(default_factory=threading.Condition)
    decoders: tuple[codecs.IncrementalDecoder, ...] = field(
        default_factory=lambda: (codecs.getincrementaldecoder("utf-8")("replace"),
                                 codecs.getincrementaldecoder("utf-8")("replace")))

    def encoded(self, stream: int, data: bytes, final: bool) -> bytes:
        """`data` (UTF-8) as the shell's code page would render it."""
        if self.codepage == 65001:
            return data
        text = self.decoders[stream].decode(data, final=final)
        return text.encode(f"cp{self.codepage}", errors="replace")

    def finish(self, out: bytes, err: bytes, rc: int) -> None:
        with self.cond:
            self.out += out
            self.err += err
            self.rc = rc
            self.cond.notify_all()


@dataclass
class Shell:
    last_used: float
    codepage: int = 437  # WinRS default without WINRS_CODEPAGE: the OEM code page
    commands: dict[str, Command] = field(default_factory=dict)


class WinRMDouble:
    """The server double. Use as a context manager; `url`/`port` tell clients where it is."""

    def __init__(self, root: Path, *, username: str = "Administrator", password: str = "pw",
                 fail_first: int = 0, listen_after: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = root
        self.drive_c = root / "C"
        self.drive_d = root / "D"  # an attached ISO
        self.env = dict(ADMIN_ENV)
        self.temp = self.path(self.env["TEMP"])
        for d in (self.drive_c, self.drive_d, self.temp, self.path("C:\\Windows\\Temp")):
            d.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self.max_envelope_kb = MAX_ENVELOPE_KB
        self.max_shells = MAX_SHELLS_PER_USER
        self.idle_timeout = IDLE_TIMEOUT_S
        self.scripts: list[str] = []  # every PowerShell script text run, as Windows read it
        self.probe = ProbeModel(self)
        self.services = ServiceModel(self)
        self.username, self.password = username, password
        self.fail_first = fail_first
        self.listen_after = listen_after
        self.shells: dict[str, Shell] = {}
        self.requests: list[tuple[str, str]] = []  # (action, raw body) of every request
        self.command_lines: list[str] = []
        self.status_log: list[int] = []
        self.lock = threading.Lock()
        self.port = _free_port()
        self._server: ThreadingHTTPServer | None = None
        self._timer: threading.Timer | None = None

    # -- lifecycle --

    def __enter__(self) -> WinRMDouble:
        if self.listen_after > 0:
            self._timer = threading.Timer(self.listen_after, self._listen)
            self._timer.start()
        else:
            self._listen()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for shell in self.shells.values():
            for cmd in shell.commands.values():
                _kill(cmd)

    def _listen(self) -> None:
        double = self

        class Handler(_Handler):
            server_double = double

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/wsman"

    # -- protocol --

    def handle(self, body: bytes) -> tuple[int, str]:
        root = ET.fromstring(body)
        action = _text(root, "s:Header/a:Action")
        message_id = _text(root, "s:Header/a:MessageID")
        shell_id = _selector(root)
        with self.lock:
            self.requests.append((action, body.decode("utf-8")))
        if len(body) > self.max_envelope_kb * 1024:
            return _fault(ENVELOPE_QUOTA_FAULT, message_id,
                          "The WinRM client sent a request to the remote WS-Management service "
                          "and was notified that the request size exceeded the configured "
                          "MaxEnvelopeSize quota.")
        timeout_ms = _duration(_text(root, "s:Header/w:OperationTimeout") or "PT20S") * 1000
        if timeout_ms > MAX_TIMEOUT_MS:
            return _fault(0, message_id, f"The OperationTimeout {timeout_ms:.0f} ms exceeds "
                                         f"MaxTimeoutms ({MAX_TIMEOUT_MS}).")
        now = self.clock()
        with self.lock:
            for sid, idle in list(self.shells.items()):
                if now - idle.last_used > self.idle_timeout:
                    for cmd in idle.commands.values():
                        _kill(cmd)
                    del self.shells[sid]
        verb = action.rsplit("/", 1)[-1]
        if verb == "Create":
            if len(self.shells) >= self.max_shells:
                return _fault(SHELL_QUOTA_FAULT, message_id,
                              "The WS-Management service cannot process the request. This user "
                              f"is allowed a maximum number of {self.max_shells} concurrent "
                              "shells, which has been exceeded. Close existing shells or raise "
                              "the quota for this user.")
            codepage = 437
            for opt in root.findall("s:Header/w:OptionSet/w:Option", NS):
                if opt.get("Name") == "WINRS_CODEPAGE" and (opt.text or "").isdigit():
                    codepage = int(opt.text or "437")
            sid = str(uuid.uuid4()).upper()
            with self.lock:
                self.shells[sid] = Shell(last_used=now, codepage=codepage)
            return 200, _envelope(
                "http://schemas.xmlsoap.org/ws/2004/09/transfer/CreateResponse", message_id,
                f"<x:ResourceCreated><a:Address>{self.url}</a:Address><a:ReferenceParameters>"
                f"<w:ResourceURI>{SHELL}/cmd</w:ResourceURI><w:SelectorSet>"
                f'<w:Selector Name="ShellId">{sid}</w:Selector></w:SelectorSet>'
                f"</a:ReferenceParameters></x:ResourceCreated>"
                f"<rsp:Shell><rsp:ShellId>{sid}</rsp:ShellId></rsp:Shell>")
        shell = self.shells.get(shell_id or "")
        if shell is None:
            return _fault(SHELL_NOT_FOUND_FAULT, message_id,
                          "The request for the Windows Remote Shell with ShellId failed "
                          "because the shell was not found on the server.")
        shell.last_used = now
        if verb == "Delete":
            for cmd in shell.commands.values():
                _kill(cmd)
            with self.lock:
                del self.shells[shell_id or ""]
            return 200, _envelope("http://schemas.xmlsoap.org/ws/2004/09/transfer/"
                                  "DeleteResponse", message_id, "")
        if verb == "Command":
            line = _text(root, "s:Body/rsp:CommandLine/rsp:Command")
            args = root.find("s:Body/rsp:CommandLine/rsp:Arguments", NS)
            if args is not None and args.text:
                line = f"{line} {args.text}"
            cid = str(uuid.uuid4()).upper()
            cmd = Command(line, codepage=shell.codepage)
            shell.commands[cid] = cmd
            with self.lock:
                self.command_lines.append(line)
            self._start(cmd)
            return 200, _envelope(f"{SHELL}/CommandResponse", message_id,
                                  f"<rsp:CommandResponse><rsp:CommandId>{cid}</rsp:CommandId>"
                                  f"</rsp:CommandResponse>")
        if verb == "Receive":
            stream = root.find("s:Body/rsp:Receive/rsp:DesiredStream", NS)
            cid = stream.get("CommandId", "") if stream is not None else ""
            envelope = int(_text(root, "s:Header/w:MaxEnvelopeSize") or 153600)
            if cid not in shell.commands:  # already signalled/cleaned up, or never existed
                return _fault(COMMAND_NOT_FOUND_FAULT, message_id,
                              "The request for the Windows Remote Shell with ShellId failed "
                              "because the command was not found on the server.")
            return self._receive(shell.commands[cid], cid, message_id, timeout_ms / 1000,
                                 envelope)
        if verb == "Signal":
            sig = root.find("s:Body/rsp:Signal", NS)
            cid = sig.get("CommandId", "") if sig is not None else ""
            cmd = shell.commands.pop(cid, None)
            if cmd is not None and cmd.rc is None:
                cmd.terminated = True
                _kill(cmd)
            return 200, _envelope(f"{SHELL}/SignalResponse", message_id,
                                  "<rsp:SignalResponse/>")
        return _fault(0, message_id, f"action not supported by the double: {action}")

    def _receive(self, cmd: Command, cid: str, message_id: str, timeout: float,
                 envelope: int) -> tuple[int, str]:
        # both streams base64-encoded (4/3) in one response, plus room for the SOAP around them
        chunk = min(STREAM_CHUNK, (envelope - 4096) * 3 // 4 // 2)
        with cmd.cond:
            cmd.cond.wait_for(lambda: bool(cmd.out or cmd.err) or cmd.rc is not None,
                              timeout=timeout)
            if not (cmd.out or cmd.err) and cmd.rc is None:
                return _fault(OPERATION_TIMEOUT_FAULT, message_id,
                              "The WS-Management service cannot complete the operation "
                              "within the time specified in OperationTimeout.")
            out, err = bytes(cmd.out[:chunk]), bytes(cmd.err[:chunk])
            del cmd.out[:chunk]
            del cmd.err[:chunk]
            cmd.receives += 1
            done = cmd.rc is not None and not cmd.out and not cmd.err
            rc = cmd.rc
            out, err = cmd.encoded(0, out, done), cmd.encoded(1, err, done)
        streams = "".join(
            f'<rsp:Stream Name="{name}" CommandId="{cid}">'
            f"{base64.b64encode(data).decode('ascii')}</rsp:Stream>"
            for name, data in (("stdout", out), ("stderr", err)) if data)
        if done:
            streams += (f'<rsp:Stream Name="stdout" CommandId="{cid}" End="true"></rsp:Stream>'
                        f'<rsp:CommandState CommandId="{cid}" State="{SHELL}/CommandState/Done">'
                        f"<rsp:ExitCode>{rc}</rsp:ExitCode></rsp:CommandState>")
        else:
            streams += (f'<rsp:CommandState CommandId="{cid}" '
                        f'State="{SHELL}/CommandState/Running"/>')
        text = _envelope(f"{SHELL}/ReceiveResponse", message_id,
                         f"<rsp:ReceiveResponse>{streams}</rsp:ReceiveResponse>")
        assert len(text.encode("utf-8")) <= envelope, "the double broke MaxEnvelopeSize"
        return 200, text

    # -- the interpreter --

    def path(self, windows_path: str) -> Path:
        """Map an absolute guest path (C:\\x, D:\\x) into the scratch directory."""
        p = windows_path.strip().strip('"')
        for prefix, base in (("C:\\", self.drive_c), ("D:\\", self.drive_d)):
            if p.upper().startswith(prefix.upper()):
                return base.joinpath(*p[len(prefix):].split("\\"))
        raise ValueError(f"the double cannot map guest path {windows_path!r}")

    def _start(self, cmd: Command) -> None:
        line = expand(cmd.line, self.env)
        if len(CMD_PREFIX + line) > CMD_LINE_LIMIT:
            cmd.finish(b"", TOO_LONG, 1)
            return
        if m := re.fullmatch(r'>>("[^"]+") echo (\S+)', line):
            with self.path(m[1]).open("ab") as f:
                f.write(m[2].encode("ascii") + b" \r\n")
            cmd.finish(b"", b"", 0)
        elif m := re.fullmatch(r'if exist ("[^"]+") del /f /q \1', line):
            self.path(m[1]).unlink(missing_ok=True)
            cmd.finish(b"", b"", 0)
        elif m := re.fullmatch(r'del /f /q ("[^"]+")', line):
            target = self.path(m[1])
            if target.exists():
                target.unlink()
                cmd.finish(b"", b"", 0)
            else:
                cmd.finish(b"", b"Could Not Find " + m[1].encode() + b"\r\n", 1)
        elif re.match(r'"(sc|reg)\.exe" ', line, re.IGNORECASE):
            out, rc = self.services.call(split_argv(line))
            cmd.finish(out.encode(), b"", rc)
        elif m := re.fullmatch(r"powershell\.exe [^\"]*-EncodedCommand (\S+)", line):
            self._powershell(cmd, base64.b64decode(m[1]).decode("utf-16-le"))
        elif m := re.fullmatch(r'powershell\.exe [^"]*-File ("[^"]+")', line):
            raw = self.path(m[1]).read_bytes()
            bom = raw.startswith(b"\xef\xbb\xbf")  # else PowerShell 5.1 reads ANSI
            self._powershell(cmd, raw[3:].decode("utf-8") if bom
                             else raw.decode("cp1252", errors="replace"))
        else:
            self._sh(cmd, line)

    def _powershell(self, cmd: Command, script: str) -> None:
        """The intent table: what the harness's own PowerShell snippets do, done here."""
        with self.lock:
            self.scripts.append(script)
        stage = re.search(r"\$b='((?:[^']|'')+)';\$p='((?:[^']|'')+)';", script)
        chunk = re.search(r"if\(-not \[IO\.File\]::Exists\('(?:[^']|'')*'\)\)\{exit (\d+)\};"
                          r"\$f=\[IO\.File\]::Open\('((?:[^']|'')*)','Open','Read','ReadWrite'\);"
                          r"try\{\[void\]\$f\.Seek\((\d+),'Begin'\);\$b=New-Object byte\[\] (\d+)",
                          script)
        put = re.search(r"\$src='((?:[^']|'')*)';\$dst='((?:[^']|'')+)';", script)
        if put:  # windows.put_decoder_script: base64 lines -> bytes, renamed over the target
            data = b""
            if put[1]:
                src = self.path(put[1].replace("''", "'"))
                data = base64.b64decode(re.sub(rb"\s", b"", src.read_bytes()))
                src.unlink()
            dst = self.path(put[2].replace("''", "'"))
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(dst.name + ".hotadd-put")
            tmp.write_bytes(data)
            tmp.replace(dst)
            cmd.finish(b"", b"", 0)
        elif stage:
            src = self.path(stage[1].replace("''", "'"))
            text = base64.b64decode(re.sub(rb"\s", b"", src.read_bytes()))
            self.path(stage[2].replace("''", "'")).write_bytes(b"\xef\xbb\xbf" + text)
            src.unlink()
            cmd.finish(b"", b"", 0)
        elif chunk:
            try:
                target = self.path(chunk[2].replace("''", "'"))
            except ValueError as exc:
                cmd.finish(b"", f"Exception calling \"Open\": {exc}\r\n".encode(), 1)
                return
            if not target.is_file():
                cmd.finish(b"", b"", int(chunk[1]))
                return
            with target.open("rb") as f:
                f.seek(int(chunk[3]))
                data = f.read(int(chunk[4]))
            cmd.finish(base64.b64encode(data), b"", 0)
        elif "[Diagnostics.Stopwatch]::GetTimestamp()" in script:
            cmd.finish(*self.probe.clock())
        elif "function Install-HotAddProbe" in script:
            out, rc = self.probe.call(script.strip().splitlines()[-1])
            cmd.finish(out.encode() + b"\r\n" if rc == 0 else b"",
                       b"" if rc == 0 else out.encode(), rc)
        else:
            self._sh(cmd, script)

    def _sh(self, cmd: Command, script: str) -> None:
        """Run portable script text with sh, streaming its output into the command. The text
        goes through a file: Linux caps one argv string at 128 KiB, Windows has no such cap."""
        text = self.root / f".sh-{uuid.uuid4().hex}"
        text.write_text(script, encoding="utf-8")
        proc = subprocess.Popen(["sh", str(text)], cwd=self.root, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        cmd.proc = proc

        def pump(src: object, buf: bytearray) -> None:
            assert hasattr(src, "read1")
            while data := src.read1(65536):
                with cmd.cond:
                    buf += data
                    cmd.cond.notify_all()

        readers = [threading.Thread(target=pump, args=(proc.stdout, cmd.out), daemon=True),
                   threading.Thread(target=pump, args=(proc.stderr, cmd.err), daemon=True)]
        for r in readers:
            r.start()

        def reap() -> None:
            rc = proc.wait()
            text.unlink(missing_ok=True)
            for r in readers:
                r.join()
            cmd.finish(b"", b"", rc)

        threading.Thread(target=reap, daemon=True).start()


def split_argv(line: str) -> list[str]:
    """A command line split as CommandLineToArgvW does ("Parsing C++ command-line arguments",
    https://learn.microsoft.com/en-us/cpp/cpp/main-function-command-line-args): whitespace
    outside quotes separates; 2n backslashes before a quote are n and the quote toggles
    quoting; 2n+1 are n and a literal quote; other backslashes are literal."""
    args: list[str] = []
    cur: list[str] = []
    quoted = started = False
    i = 0
    while i < len(line):
        c = line[i]
        if c == "\\":
            n = len(line[i:]) - len(line[i:].lstrip("\\"))
            if i + n < len(line) and line[i + n] == '"':
                cur.append("\\" * (n // 2))
                if n % 2:
                    cur.append('"')
                    i += n + 1
                else:
                    i += n
                started = True
                continue
            cur.append("\\" * n)
            i += n
            started = True
            continue
        if c == '"':
            quoted = not quoted
            started = True
        elif c in " \t" and not quoted:
            if started:
                args.append("".join(cur))
                cur, started = [], False
        else:
            cur.append(c)
            started = True
        i += 1
    if started:
        args.append("".join(cur))
    return args


class ServiceModel:
    """What sc.exe and reg.exe do to a Windows guest's kernel services, as a tiny model (for a
    developer's driver: harness.guests.windows_control's own-driver functions). Exit codes are
    the Win32 errors sc.exe returns ("System Error Codes (1000-1299)", https://
    learn.microsoft.com/en-us/windows/win32/debug/system-error-codes--1000-1299-); option
    names are tokens of their own ending in "=", as sc.exe requires ("sc.exe create",
    https://learn.microsoft.com/en-us/windows-server/administration/windows-commands/
    sc-create): "type=kernel" in one token is refused as sc.exe refuses it (1639).
    `start_code` makes the next starts fail as Windows would (577: the image's signature is
    not accepted); `stop_itself(name)` is a driver whose service stopped on its own."""

    def __init__(self, double: WinRMDouble) -> None:
        self.double = double
        self.services: dict[str, dict[str, str]] = {}  # lower-case name -> fields
        self.registry: dict[str, dict[str, tuple[str, str]]] = {}
        self.start_code = 0
        self.calls: list[list[str]] = []

    def stop_itself(self, name: str) -> None:
        self.services[name.lower()]["state"] = "STOPPED"

    def call(self, argv: list[str]) -> tuple[str, int]:
        self.calls.append(argv)
        exe = argv[0].lower()
        if exe == "reg.exe":
            return self._reg(argv[1:])
        verb, name, rest = argv[1].lower(), argv[2], argv[3:]
        svc = self.services.get(name.lower())
        if verb in ("create", "config"):
            opts = dict(zip(rest[::2], rest[1::2], strict=False))
            if len(rest) % 2 or not all(k.endswith("=") for k in opts):
                return "[SC] invalid option syntax (the value goes after a space)\r\n", 1639
            if verb == "create" and svc is not None:
                return ("[SC] CreateService FAILED 1073:\r\n\r\n"
                        "The specified service already exists.\r\n"), 1073
            if verb == "config" and svc is None:
                return "[SC] OpenService FAILED 1060:\r\n", 1060
            entry = svc or {"name": name, "state": "STOPPED"}
            entry.update({k[:-1].lower(): v for k, v in opts.items()})
            self.services[name.lower()] = entry
            return f"[SC] {'CreateService' if verb == 'create' else 'ChangeServiceConfig'} " \
                   "SUCCESS\r\n", 0
        if svc is None:
            return "[SC] OpenService FAILED 1060:\r\n\r\nThe specified service does " \
                   "not exist as an installed service.\r\n", 1060
        if verb == "start":
            if svc["state"] == "RUNNING":
                return "[SC] StartService FAILED 1056:\r\n", 1056
            if not self.double.path(svc["binpath"]).is_file():
                return "[SC] StartService FAILED 2:\r\n", 2
            if self.start_code:
                return f"[SC] StartService FAILED {self.start_code}:\r\n", self.start_code
            svc["state"] = "RUNNING"
        elif verb == "stop":
            if svc["state"] != "RUNNING":
                return "[SC] ControlService FAILED 1062:\r\n", 1062
            svc["state"] = "STOPPED"
        elif verb != "query":
            return f"[SC] unknown verb {verb}\r\n", 1639
        code = 4 if svc["state"] == "RUNNING" else 1
        return (f"\r\nSERVICE_NAME: {svc['name']}\r\n        TYPE               : 1  "
                f"KERNEL_DRIVER\r\n        STATE              : {code}  {svc['state']}\r\n"), 0

    def _reg(self, args: list[str]) -> tuple[str, int]:
        if len(args) != 9 or args[0] != "add" or args[2:8:2] != ["/v", "/t", "/d"] \
                or args[8] != "/f":
            return "ERROR: Invalid syntax.\r\n", 1
        key, name, kind, data = args[1], args[3], args[5], args[7]
        if kind == "REG_DWORD" and not (data.isdigit() and int(data) <= 0xFFFF_FFFF):
            return "ERROR: Invalid value for REG_DWORD.\r\n", 1
        self.registry.setdefault(key.lower(), {})[name] = (kind, data)
        return "The operation completed successfully.\r\n", 0


class ProbeModel:
    """What vm/windows/hotadd-probe.ps1's functions do to a Windows guest, as a tiny model:
    the service's state and Parameters, the records file, the processor count. The harness's
    call line (the script's last line) is parsed as PowerShell would bind it. Replies are built
    from the harness's reply types (`windows_control.PROBE_REPLIES`), the one declaration of
    their keys that the script is checked against too."""

    RECORDS = windows_control.RECORDS_PATH

    def __init__(self, double: WinRMDouble) -> None:
        self.double = double
        self.state = "Absent"
        self.parameters: dict[str, int] = {}
        self.logical = 2
        self.start_code = 0  # what sc.exe start returns (e.g. 31 when DriverEntry fails)
        self.marker: dict[str, object] | None = None  # C:\\ProgramData\\HotAdd\\provisioned.json
        self.last_boot_utc = "2026-11-24T07:00:00.1234567Z"
        self.test_signing = True
        self.build = 20348
        self.driver_has_clock = True  # load records carry qpc/qpc_hz (the current driver)
        self.loaded_at = 0.0
        self.vbs_status: int | None = 0
        self.calls: list[str] = []

    def call(self, line: str) -> tuple[str, int]:
        self.calls.append(line)
        name, _, rest = line.partition(" ")
        args = {k: v.strip("'").replace("''", "'") for k, v in
                re.findall(r"-(\w+) ('(?:[^']|'')*'|-?\d+)", rest)}
        handler = getattr(self, name.replace("-", "_").lower(), None)
        if handler is None:
            return f"The term '{name}' is not recognized", 1
        result: dict[str, object] | str = handler(args)
        if isinstance(result, str):
            return result, 1
        return json.dumps(result, separators=(",", ":")), 0

    def _records(self) -> Path:
        return self.double.path(self.RECORDS)

    QPC_HZ = 10_000_000  # what Windows reports on current hardware

    def qpc(self, t: float) -> int:
        """The guest's performance counter at host time `t` (guest and host share a clock)."""
        return int(t * self.QPC_HZ)

    def clock(self) -> tuple[bytes, bytes, int]:
        """The clock snippet: t_ns now from the load record's qpc, as the script computes."""
        first = json.loads(self._records().read_text().splitlines()[0])
        if first.get("event") != "load" or not first.get("qpc_hz"):
            return b"", b"", 45
        now = self.qpc(time.time())
        return str((now - first["qpc"]) * 1_000_000_000 // first["qpc_hz"]).encode(), b"", 0

    def install_hotaddprobe(self, args: dict[str, str]) -> dict[str, object] | str:
        source = args["Source"]
        candidates = [source] if ":" in source else [f"C:\\{source}", f"D:\\{source}"]
        found = next((c for c in candidates if self.double.path(c).is_file()), None)
        if found is None:
            return f"no drive holds {source} (is the driver ISO attached?)"
        self.state = "Stopped"
        return asdict(windows_control.DriverInstall(
            service="HotAddProbe", path="C:\\Windows\\System32\\drivers\\HotAddProbe.sys",
            source=found, signed_in_guest=True, signature="Valid",
            signer="CN=hotadd test signing (lab only)"))

    def set_hotaddprobeparameters(self, args: dict[str, str]) -> dict[str, object] | str:
        if unknown := set(args) - set(windows_control.ProbeParameters.NAMES):
            return f"A parameter cannot be found that matches parameter name {sorted(unknown)}"
        for key, value in args.items():
            if int(value) < 0:
                self.parameters.pop(key, None)
            else:
                self.parameters[key] = int(value)
        return dict(self.parameters)

    def start_hotaddprobe(self, args: dict[str, str]) -> dict[str, object] | str:
        if self.state == "Absent":
            return "sc.exe start: the service does not exist (1060)"
        path = self._records()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.loaded_at = time.time()
        load: dict[str, object] = {"v": 1, "seq": 1, "t_ns": 0, "kind": "driver",
                                   "event": "load", "active_count": self.logical,
                                   "flags": self.parameters.get("Flags", 1)}
        if self.driver_has_clock:
            load |= {"qpc": self.qpc(self.loaded_at), "qpc_hz": self.QPC_HZ}
        lines = [load]
        if self.start_code == 0:
            self.state = "Running"
            lines.append({"v": 1, "seq": 2, "t_ns": 1000, "kind": "driver",
                          "event": "registered"})
        path.write_text("".join(json.dumps(r) + "\n" for r in lines))
        return asdict(windows_control.ServiceStart(
            started=self.start_code == 0, code=self.start_code, state=self.state,
            message="" if self.start_code == 0 else "A device attached to the system is not "
                                                    "functioning."))

    def stop_hotaddprobe(self, args: dict[str, str]) -> dict[str, object] | str:
        code = 0 if self.state == "Running" else 1062
        if self.state == "Running":
            with self._records().open("a") as f:
                f.write('{"v":1,"seq":3,"t_ns":2000,"kind":"driver","event":"deregistered"}\n')
        self.state = "Stopped"
        return asdict(windows_control.ServiceStop(stopped=True, code=code, state=self.state))

    def get_hotaddrecords(self, args: dict[str, str]) -> dict[str, object] | str:
        path = self._records()
        return asdict(windows_control.RecordsText(path=self.RECORDS, exists=path.is_file(),
                                          text=path.read_text() if path.is_file() else ""))

    def get_hotaddprocessorcount(self, args: dict[str, str]) -> dict[str, object] | str:
        return asdict(windows_control.ProcessorCount(logical=self.logical,
                                             active_all_groups=self.logical,
                                             environment=self.logical))

    def get_hotaddpreflight(self, args: dict[str, str]) -> dict[str, object] | str:
        return asdict(windows_control.Preflight(
            product="Windows Server 2022 Datacenter Evaluation", edition="ServerDatacenterEval",
            build=self.build, installation_type="Server", dyn_processor_enabled=True,
            licence_dynamic_partitioning=1, test_signing=self.test_signing, secure_boot=None,
            wdf_version="1.33.20348.1", vbs_status=self.vbs_status,
            logical_processors=self.logical, last_boot_utc=self.last_boot_utc))

    def get_hotaddprovisioning(self, args: dict[str, str]) -> dict[str, object] | str:
        return asdict(windows_control.Provisioning(marker=self.marker,
                                                   last_boot_utc=self.last_boot_utc))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out separately: no 40 ms stalls
    server_double: WinRMDouble

    def log_message(self, format: str, *args: object) -> None:  # quiet
        return

    def do_POST(self) -> None:
        d = self.server_double
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        expected = "Basic " + base64.b64encode(
            f"{d.username}:{d.password}".encode()).decode("ascii")
        with d.lock:
            failing = d.fail_first > 0
            if failing:
                d.fail_first -= 1
        if failing:
            status, text, headers = 500, "", {}
        elif self.headers.get("Authorization") != expected:
            status, text, headers = 401, "", {"WWW-Authenticate": 'Basic realm="WSMAN"'}
        else:
            status, text = d.handle(body)
            headers = {"Content-Type": "application/soap+xml;charset=UTF-8"}
        with d.lock:
            d.status_log.append(status)
        payload = text.encode("utf-8")
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def _envelope(action: str, relates_to: str, body: str) -> str:
    return (
        '<s:Envelope xml:lang="en-US" xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
        'xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" '
        'xmlns:x="http://schemas.xmlsoap.org/ws/2004/09/transfer" '
        'xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" '
        f'xmlns:rsp="{SHELL}" xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd">'
        f"<s:Header><a:Action>{action}</a:Action>"
        f"<a:MessageID>uuid:{uuid.uuid4()}</a:MessageID>"
        f"<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>"
        f"<a:RelatesTo>{relates_to}</a:RelatesTo></s:Header>"
        f"<s:Body>{body}</s:Body></s:Envelope>"
    )


def _fault(code: int, relates_to: str, reason: str) -> tuple[int, str]:
    detail = (f'<s:Detail><f:WSManFault xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/'
              f'wsmanfault" Code="{code}" Machine="double"><f:Message>{escape(reason)}'
              f"</f:Message></f:WSManFault></s:Detail>") if code else ""
    return 500, _envelope(
        "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault", relates_to,
        "<s:Fault><s:Code><s:Value>s:Receiver</s:Value><s:Subcode>"
        "<s:Value>w:TimedOut</s:Value></s:Subcode></s:Code>"
        f'<s:Reason><s:Text xml:lang="en-US">{escape(reason)}</s:Text></s:Reason>'
        f"{detail}</s:Fault>")


def _text(root: ET.Element, path: str) -> str:
    node = root.find(path, NS)
    return (node.text or "") if node is not None else ""


def _selector(root: ET.Element) -> str | None:
    for node in root.findall("s:Header/w:SelectorSet/w:Selector", NS):
        if node.get("Name") == "ShellId":
            return node.text
    return None


def _duration(text: str) -> float:
    m = re.fullmatch(r"PT([\d.]+)S", text)
    return float(m[1]) if m else 20.0


def _kill(cmd: Command) -> None:
    if cmd.proc is not None and cmd.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(cmd.proc.pid, signal.SIGKILL)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(predicate: object, timeout: float = 5.0) -> bool:
    """Poll a zero-argument callable until it returns true (for asserting on the double)."""
    assert callable(predicate)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return True
        time.sleep(0.02)
    return False

"""A WS-Management shell-protocol server double: the Windows side of WinRM, for tests.

We cannot run Windows here, so this double stands at the boundary: a real HTTP server on
127.0.0.1 that answers the SOAP envelopes pywinrm sends (Create shell, Command, Receive,
Signal, Delete; HTTP Basic auth) the way the WinRM service does: command and shell ids,
base64 stream chunks over as many Receive responses as the output needs, CommandState
Running/Done with ExitCode, the OperationTimeout fault (2150858793) while a command is silent,
401 for bad credentials. It can refuse connections for a while (nothing listens on the port
yet) and answer HTTP 500 to the first N requests, as a booting guest does.

Commands are executed by a small deterministic interpreter, not by Windows:
- the cmd.exe forms the harness emits (`>>"FILE" echo DATA`, `if exist F del`, `del /f /q F`)
  act on a scratch directory (`%TEMP%` and `C:\\` are mapped into it);
- `powershell.exe ... -EncodedCommand B64` is decoded (UTF-16LE) and its intent looked up in a
  tiny table (the staging decoder and the fetch-chunk reader, matched by regex; a script that
  is vm/windows/hotadd-probe.ps1 plus a call line goes to `ProbeModel`, a model of what those
  functions do to the guest); any other script text runs as portable `sh` script text;
- `powershell.exe ... -File F` (a staged long script) is treated like the decoded text above;
- any other command line runs with `sh -c`.
Command lines longer than cmd.exe's 8191 characters fail as they do on Windows.
"""

from __future__ import annotations

import base64
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
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from xml.sax.saxutils import escape

from harness.guests import windows_control as windows

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
}
SHELL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
CMD_LINE_LIMIT = 8191
STREAM_CHUNK = 64 * 1024  # bytes per stream per Receive response (Windows sends small chunks)
OPERATION_TIMEOUT_FAULT = 2150858793
SHELL_NOT_FOUND_FAULT = 2150858843


@dataclass
class Command:
    """One command's output as it is produced, and its exit code once known."""

    line: str
    out: bytearray = field(default_factory=bytearray)
    err: bytearray = field(default_factory=bytearray)
    rc: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    receives: int = 0
    terminated: bool = False
    cond: threading.Condition = field(default_factory=threading.Condition)

    def finish(self, out: bytes, err: bytes, rc: int) -> None:
        with self.cond:
            self.out += out
            self.err += err
            self.rc = rc
            self.cond.notify_all()


@dataclass
class Shell:
    commands: dict[str, Command] = field(default_factory=dict)


class WinRMDouble:
    """The server double. Use as a context manager; `url`/`port` tell clients where it is."""

    def __init__(self, root: Path, *, username: str = "Administrator", password: str = "pw",
                 fail_first: int = 0, listen_after: float = 0.0) -> None:
        self.root = root
        self.temp = root / "TEMP"
        self.drive_c = root / "C"
        self.drive_d = root / "D"  # an attached ISO
        for d in (self.temp, self.drive_c, self.drive_d):
            d.mkdir(parents=True, exist_ok=True)
        self.probe = ProbeModel(self)
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
        verb = action.rsplit("/", 1)[-1]
        if verb == "Create":
            sid = str(uuid.uuid4()).upper()
            with self.lock:
                self.shells[sid] = Shell()
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
            cmd = Command(line)
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
            timeout = _duration(_text(root, "s:Header/w:OperationTimeout") or "PT20S")
            return self._receive(shell.commands[cid], cid, message_id, timeout)
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

    def _receive(self, cmd: Command, cid: str, message_id: str, timeout: float
                 ) -> tuple[int, str]:
        with cmd.cond:
            cmd.cond.wait_for(lambda: bool(cmd.out or cmd.err) or cmd.rc is not None,
                              timeout=timeout)
            if not (cmd.out or cmd.err) and cmd.rc is None:
                return _fault(OPERATION_TIMEOUT_FAULT, message_id,
                              "The WS-Management service cannot complete the operation "
                              "within the time specified in OperationTimeout.")
            out, err = bytes(cmd.out[:STREAM_CHUNK]), bytes(cmd.err[:STREAM_CHUNK])
            del cmd.out[:STREAM_CHUNK]
            del cmd.err[:STREAM_CHUNK]
            cmd.receives += 1
            done = cmd.rc is not None and not cmd.out and not cmd.err
            rc = cmd.rc
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
        return 200, _envelope(f"{SHELL}/ReceiveResponse", message_id,
                              f"<rsp:ReceiveResponse>{streams}</rsp:ReceiveResponse>")

    # -- the interpreter --

    def path(self, windows_path: str) -> Path:
        """Map a guest path (%TEMP%\\x, $env:TEMP\\x, C:\\x) into the scratch directory."""
        p = windows_path.strip().strip('"')
        for prefix, base in (("%TEMP%\\", self.temp), ("C:\\", self.drive_c),
                             ("D:\\", self.drive_d)):
            if p.upper().startswith(prefix.upper()):
                return base.joinpath(*p[len(prefix):].split("\\"))
        raise ValueError(f"the double cannot map guest path {windows_path!r}")

    def _start(self, cmd: Command) -> None:
        line = cmd.line
        if len(line) > CMD_LINE_LIMIT:
            cmd.finish(b"", b"The command line is too long.\r\n", 1)
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
        elif m := re.fullmatch(r"powershell\.exe [^\"]*-EncodedCommand (\S+)", line):
            self._powershell(cmd, base64.b64decode(m[1]).decode("utf-16-le"))
        elif m := re.fullmatch(r'powershell\.exe [^"]*-File ("[^"]+")', line):
            self._powershell(cmd, self.path(m[1]).read_text(encoding="utf-8-sig"))
        else:
            self._sh(cmd, line)

    def _powershell(self, cmd: Command, script: str) -> None:
        """The intent table: what the harness's own PowerShell snippets do, done here."""
        stage = re.search(r"\$b=Join-Path \$env:TEMP '([\w.-]+)\.b64';"
                          r"\$p=Join-Path \$env:TEMP '([\w.-]+)\.ps1'", script)
        chunk = re.search(r"if\(-not \[IO\.File\]::Exists\('(?:[^']|'')*'\)\)\{exit (\d+)\};"
                          r"\$f=\[IO\.File\]::Open\('((?:[^']|'')*)','Open','Read','ReadWrite'\);"
                          r"try\{\[void\]\$f\.Seek\((\d+),'Begin'\);\$b=New-Object byte\[\] (\d+)",
                          script)
        if stage:
            src = self.temp / f"{stage[1]}.b64"
            text = base64.b64decode(re.sub(rb"\s", b"", src.read_bytes()))
            (self.temp / f"{stage[2]}.ps1").write_bytes(b"\xef\xbb\xbf" + text)
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
        elif "function Install-HotAddProbe" in script:
            out, rc = self.probe.call(script.strip().splitlines()[-1])
            cmd.finish(out.encode() + b"\r\n" if rc == 0 else b"",
                       b"" if rc == 0 else out.encode(), rc)
        else:
            self._sh(cmd, script)

    def _sh(self, cmd: Command, script: str) -> None:
        """Run portable script text with sh, streaming its output into the command."""
        proc = subprocess.Popen(["sh", "-c", script], cwd=self.root, stdin=subprocess.DEVNULL,
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
            for r in readers:
                r.join()
            cmd.finish(b"", b"", rc)

        threading.Thread(target=reap, daemon=True).start()


class ProbeModel:
    """What vm/windows/hotadd-probe.ps1's functions do to a Windows guest, as a tiny model:
    the service's state and Parameters, the records file, the processor count. The harness's
    call line (the script's last line) is parsed as PowerShell would bind it. Replies are built
    from the harness's reply types (`windows.PROBE_REPLIES`), the one declaration of their keys
    that the script is checked against too."""

    RECORDS = windows.RECORDS_PATH

    def __init__(self, double: WinRMDouble) -> None:
        self.double = double
        self.state = "Absent"
        self.parameters: dict[str, int] = {}
        self.logical = 2
        self.start_code = 0  # what sc.exe start returns (e.g. 31 when DriverEntry fails)
        self.marker: dict[str, object] | None = None  # C:\\ProgramData\\HotAdd\\provisioned.json
        self.last_boot_utc = "2026-11-24T07:00:00.1234567Z"
        self.test_signing = True
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

    def install_hotaddprobe(self, args: dict[str, str]) -> dict[str, object] | str:
        source = args["Source"]
        candidates = [source] if ":" in source else [f"C:\\{source}", f"D:\\{source}"]
        found = next((c for c in candidates if self.double.path(c).is_file()), None)
        if found is None:
            return f"no drive holds {source} (is the driver ISO attached?)"
        self.state = "Stopped"
        return asdict(windows.DriverInstall(
            service="HotAddProbe", path="C:\\Windows\\System32\\drivers\\HotAddProbe.sys",
            source=found, signed_in_guest=True, signature="Valid",
            signer="CN=hotadd test signing (lab only)"))

    def set_hotaddprobeparameters(self, args: dict[str, str]) -> dict[str, object] | str:
        if unknown := set(args) - set(windows.ProbeParameters.NAMES):
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
        lines = [{"v": 1, "seq": 1, "t_ns": 0, "kind": "driver", "event": "load",
                  "active_count": self.logical, "flags": self.parameters.get("Flags", 1)}]
        if self.start_code == 0:
            self.state = "Running"
            lines.append({"v": 1, "seq": 2, "t_ns": 1000, "kind": "driver",
                          "event": "registered"})
        path.write_text("".join(json.dumps(r) + "\n" for r in lines))
        return asdict(windows.ServiceStart(
            started=self.start_code == 0, code=self.start_code, state=self.state,
            message="" if self.start_code == 0 else "A device attached to the system is not "
                                                    "functioning."))

    def stop_hotaddprobe(self, args: dict[str, str]) -> dict[str, object] | str:
        code = 0 if self.state == "Running" else 1062
        if self.state == "Running":
            with self._records().open("a") as f:
                f.write('{"v":1,"seq":3,"t_ns":2000,"kind":"driver","event":"deregistered"}\n')
        self.state = "Stopped"
        return asdict(windows.ServiceStop(stopped=True, code=code, state=self.state))

    def get_hotaddrecords(self, args: dict[str, str]) -> dict[str, object] | str:
        path = self._records()
        return asdict(windows.RecordsText(path=self.RECORDS, exists=path.is_file(),
                                          text=path.read_text() if path.is_file() else ""))

    def get_hotaddprocessorcount(self, args: dict[str, str]) -> dict[str, object] | str:
        return asdict(windows.ProcessorCount(logical=self.logical,
                                             active_all_groups=self.logical,
                                             environment=self.logical))

    def get_hotaddpreflight(self, args: dict[str, str]) -> dict[str, object] | str:
        return asdict(windows.Preflight(
            product="Windows Server 2022 Datacenter Evaluation", edition="ServerDatacenterEval",
            build=20348, installation_type="Server", dyn_processor_enabled=True,
            licence_dynamic_partitioning=1, test_signing=self.test_signing, secure_boot=None,
            wdf_version="1.33.20348.1", logical_processors=self.logical,
            last_boot_utc=self.last_boot_utc))

    def get_hotaddprovisioning(self, args: dict[str, str]) -> dict[str, object] | str:
        return asdict(windows.Provisioning(marker=self.marker, last_boot_utc=self.last_boot_utc))


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

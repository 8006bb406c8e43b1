"""Probe control in a running Windows guest, over any Transport whose shell is cmd.exe.

Each operation runs one function of `vm/windows/hotadd-probe.ps1` (driver install, service
Parameters, start/stop, processor counts, the preflight, the provisioning marker) and parses
the JSON line it prints. Only the `Transport` interface is used (cmd.exe command lines carrying
PowerShell), so WinRM and Windows OpenSSH both work.
"""

from __future__ import annotations

import enum
import json
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, get_args, get_type_hints

from harness.clock import ClockSample
from harness.errors import GuestNotReady, InputError, TransportError
from harness.paths import REPO_ROOT
from harness.transport.base import CommandResult, Transport
from harness.transport.winrm import (
    RemoteFileMissing,
    encoded_command,
    fetch_by_chunks,
    run_powershell,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

VM_DIR = REPO_ROOT / "vm" / "windows"
PROBE_SCRIPT = VM_DIR / "hotadd-probe.ps1"
#: Oldest Windows build the probe loads on: Server 2019 (17763) ships KMDF 1.27, which the
#: driver is built against; Server 2016 (14393) ships KMDF 1.19.
MIN_BUILD = 17763
RECORDS_PATH = r"C:\ProgramData\HotAddProbe\records.jsonl"
SERVICE_NAME = "HotAddProbe"
PROVISION_LOG = r"C:\ProgramData\HotAdd\provision.log"


# Every hotadd-probe.ps1 function prints one JSON object. Its keys are declared once, here: a
# reply type's FUNCTION and field names (in the script's order). The script's hashtable literals
# and the WinRM test double follow them; tests/unit/test_probe_replies.py parses the script.


@dataclass(frozen=True)
class ProbeParameters:
    """The driver service's Parameters values (driver/recorder/probe_public.h); None = leave unset.
    Set-HotAddProbeParameters takes them as NAMES and replies with those that are set."""

    FUNCTION: ClassVar[str] = "Set-HotAddProbeParameters"
    NAMES: ClassVar[tuple[str, ...]] = ("Flags", "VetoIndex", "VetoStatus", "VetoDuringReplay")

    flags: int = 1
    veto_index: int | None = None
    veto_status: int | None = None
    veto_during_replay: bool | None = None

    def call(self) -> str:
        def num(v: int | bool | None) -> int:
            return -1 if v is None else int(v)

        values = (self.flags, self.veto_index, self.veto_status, self.veto_during_replay)
        return " ".join([self.FUNCTION, *(f"-{name} {num(value)}"
                                          for name, value in zip(self.NAMES, values, strict=True))])


@dataclass(frozen=True)
class DriverInstall:
    """Install-HotAddProbe's reply."""

    FUNCTION: ClassVar[str] = "Install-HotAddProbe"

    service: str
    path: str
    source: str
    signed_in_guest: bool
    signature: str
    signer: str


@dataclass(frozen=True)
class ServiceStart:
    """Start-HotAddProbe's reply: a refused start is a result (the replay-veto scenario)."""

    FUNCTION: ClassVar[str] = "Start-HotAddProbe"

    started: bool
    code: int
    state: str
    message: str


@dataclass(frozen=True)
class ServiceStop:
    """Stop-HotAddProbe's reply (code 1062: it was not running)."""

    FUNCTION: ClassVar[str] = "Stop-HotAddProbe"

    stopped: bool
    code: int
    state: str


@dataclass(frozen=True)
class RecordsText:
    """Get-HotAddRecords' reply, for people in a lab guest (the harness fetches the file in
    chunks instead); declared so its keys are checked like the others."""

    FUNCTION: ClassVar[str] = "Get-HotAddRecords"

    path: str
    exists: bool
    text: str


@dataclass(frozen=True)
class ProcessorCount:
    """Counts read in a fresh guest process: WMI's, the kernel's (all groups), .NET's."""

    FUNCTION: ClassVar[str] = "Get-HotAddProcessorCount"

    logical: int
    active_all_groups: int
    environment: int


@dataclass(frozen=True)
class Provisioning:
    """Get-HotAddProvisioning's reply: hotadd-provision.ps1's marker (None until it finished)
    and the current boot time."""

    FUNCTION: ClassVar[str] = "Get-HotAddProvisioning"

    marker: dict[str, Any] | None
    last_boot_utc: str


class VbsStatus(enum.IntEnum):
    """Win32_DeviceGuard.VirtualizationBasedSecurityStatus."""

    OFF = 0
    ENABLED_NOT_RUNNING = 1
    RUNNING = 2


@dataclass(frozen=True)
class Preflight:
    """Get-HotAddPreflight's reply: can the guest take CPU hot-add and load a test-signed
    driver."""

    FUNCTION: ClassVar[str] = "Get-HotAddPreflight"

    product: str
    edition: str
    build: int
    installation_type: str
    dyn_processor_enabled: bool
    licence_dynamic_partitioning: int | None
    test_signing: bool | None
    secure_boot: bool | None
    wdf_version: str
    vbs_status: int | None  # Win32_DeviceGuard's; None: the guest could not tell
    logical_processors: int
    last_boot_utc: str

    @property
    def vbs(self) -> VbsStatus | None:
        return None if self.vbs_status is None else VbsStatus(self.vbs_status)

    def check(self) -> Preflight:
        """This preflight, or InputError if the guest is too old for the probe."""
        if self.build < MIN_BUILD:
            raise InputError(
                f"the guest is Windows build {self.build} ({self.product}); the probe needs "
                f"build {MIN_BUILD} (Server 2019) or later: Server 2016 ships KMDF 1.19 and "
                "the driver needs KMDF 1.27",
                "build the image from Windows Server 2019, 2022 or 2025 media")
        return self


#: Every reply type, by the function that prints it.
PROBE_REPLIES: tuple[type[DataclassInstance], ...] = (
    DriverInstall, ServiceStart, ServiceStop, RecordsText, ProcessorCount, Provisioning,
    Preflight)

_Reply = TypeVar("_Reply", bound="DataclassInstance")


def parse_reply(reply: type[_Reply], data: dict[str, Any]) -> _Reply:
    """`data` as the reply type: every declared key present, values of the declared types
    (bool/int/str converted as before, None only where the type allows it)."""
    hints = get_type_hints(reply)
    values: dict[str, Any] = {}
    function = getattr(reply, "FUNCTION", reply.__name__)
    for f in fields(reply):
        if f.name not in data:
            raise TransportError(f"{function}: the guest's reply lacks {f.name!r}: {data}",
                                 "compare vm/windows/hotadd-probe.ps1 with the guest's copy")
        values[f.name] = _reply_value(hints[f.name], data[f.name], f"{function}.{f.name}")
    return reply(**values)


def _reply_value(hint: Any, value: Any, where: str) -> Any:
    options = get_args(hint) or (hint,)
    if value is None and type(None) in options:
        return None
    for kind in options:
        if kind in (bool, int, str) and value is not None:
            try:
                return kind(value)
            except (TypeError, ValueError):
                break
        if getattr(kind, "__origin__", None) is dict and isinstance(value, dict):
            return value
    want = getattr(hint, "__name__", hint)
    raise TransportError(f"{where}: unexpected value {value!r} from the guest (want {want})",
                         "compare vm/windows/hotadd-probe.ps1 with the guest's copy")



def ps_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def probe_control(transport: Transport, call: str, timeout: float = 300.0) -> dict[str, Any]:
    """Run one hotadd-probe.ps1 function in the guest; its JSON result as a dict."""
    script = PROBE_SCRIPT.read_text(encoding="utf-8") + "\n" + call + "\n"
    res: CommandResult = run_powershell(transport, script, timeout,
                                        shown=f"hotadd-probe.ps1: {call}")
    res.check()
    lines = [ln for ln in res.stdout.splitlines() if ln.strip().startswith("{")]
    if not lines:
        raise TransportError(f"{call}: no JSON result in the guest's output: "
                             f"{res.stdout.strip()[-500:]}", "run it by hand in the guest")
    try:
        data: dict[str, Any] = json.loads(lines[-1])
    except ValueError as exc:
        raise TransportError(f"{call}: bad JSON from the guest ({exc}): {lines[-1][:300]}",
                             "run it by hand in the guest") from None
    return data


#: Exit code of the clock snippet when the load record carries no qpc (an older driver).
NO_CLOCK_RC = 45


def clock_script(records_path: str = RECORDS_PATH) -> str:
    """PowerShell short enough for one -EncodedCommand: the probe's t_ns now, from the load
    record's qpc/qpc_hz and QueryPerformanceCounter (Stopwatch), which reads the counter
    KeQueryPerformanceCounter does. The counter is read last, just before the answer."""
    return (
        "$ErrorActionPreference='Stop';"
        f"$l=Get-Content -LiteralPath {ps_literal(records_path)} -TotalCount 1|ConvertFrom-Json;"
        f"if($l.event -ne 'load' -or -not $l.qpc_hz){{exit {NO_CLOCK_RC}}};"
        "$n=[Diagnostics.Stopwatch]::GetTimestamp();"
        "[Console]::Out.Write([decimal]::Floor(([decimal]$n-[decimal]$l.qpc)*1000000000"
        "/[decimal]$l.qpc_hz))"
    )


def clock_sample(transport: Transport) -> ClockSample | None:
    """The clock handshake: one command, timed by the host around it (`harness.clock`'s
    round trip: sent, the probe's seconds since load, received); None: the driver's load
    record has no qpc."""
    command = encoded_command(clock_script())
    before = time.time()
    res = transport.run(command, timeout=60.0)
    after = time.time()
    if res.rc == NO_CLOCK_RC:
        return None
    res.check()
    try:
        return ClockSample(sent=before, guest_s=int(res.stdout.strip()) / 1e9, received=after)
    except ValueError:
        raise TransportError(f"the clock handshake answered {res.stdout.strip()[:100]!r}",
                             "run the clock snippet by hand in the guest") from None


def install_driver(transport: Transport, source: str) -> DriverInstall:
    """Copy the .sys (a path, or a file name on any drive), sign it if unsigned, create the
    kernel service."""
    call = f"{DriverInstall.FUNCTION} -Source {ps_literal(source)}"
    return parse_reply(DriverInstall, probe_control(transport, call))


def set_parameters(transport: Transport, params: ProbeParameters) -> dict[str, int]:
    return {str(k): int(v) for k, v in probe_control(transport, params.call()).items()}


def start_service(transport: Transport) -> ServiceStart:
    return parse_reply(ServiceStart, probe_control(transport, ServiceStart.FUNCTION))


def stop_service(transport: Transport) -> ServiceStop:
    return parse_reply(ServiceStop, probe_control(transport, ServiceStop.FUNCTION))


def read_records(transport: Transport, path: str = RECORDS_PATH) -> str:
    """The records file of the last probe load ("" if the probe never wrote one), or of
    another writer at `path`. Fetched with cmd.exe command lines, so any Windows transport
    works (not only WinRM's fetch)."""
    with tempfile.TemporaryDirectory(prefix="hotadd-records-") as tmp:
        local = Path(tmp) / "records.jsonl"
        try:
            fetch_by_chunks(transport, path, local)
        except RemoteFileMissing:
            return ""
        return local.read_text(encoding="utf-8", errors="replace")


def processor_count(transport: Transport) -> ProcessorCount:
    """Processor counts from a fresh process in a fresh shell (a new WinRM shell / SSH
    connection: the old one may be a process that predates the hot-add)."""
    transport.close()
    return parse_reply(ProcessorCount, probe_control(transport, ProcessorCount.FUNCTION))


def preflight(transport: Transport, timeout: float = 300.0) -> Preflight:
    """Can the guest take CPU hot-add and load a test-signed driver (see hotadd-probe.ps1);
    InputError for a build older than MIN_BUILD."""
    return parse_reply(Preflight, probe_control(transport, Preflight.FUNCTION, timeout)).check()


def wait_provisioned(transport: Transport, timeout: float,
                     still_alive: Callable[[], None] | None = None) -> dict[str, Any]:
    """Wait until the provisioning marker exists and the guest booted after writing it."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if still_alive is not None:
            still_alive()
        try:
            state = parse_reply(Provisioning,
                                probe_control(transport, Provisioning.FUNCTION, timeout=120))
            marker = state.marker
            if marker and _utc(state.last_boot_utc) > _utc(str(marker["provisioned_utc"])):
                return dict(marker)
            last = "provisioning marker missing" if not marker else "not rebooted since"
        except TransportError as exc:
            last = exc.problem  # rebooting: WinRM goes away and comes back
        time.sleep(5.0)
    raise GuestNotReady(f"provisioning did not finish in {timeout:.0f}s ({last})",
                        f"read {PROVISION_LOG} in the guest")


def _utc(text: str) -> datetime:
    """PowerShell's round-trip 'o' format (7 fraction digits) as an aware datetime."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?", text.strip())
    if not m:
        raise TransportError(f"unexpected time stamp from the guest: {text!r}",
                             "report this with the guest's PowerShell version")
    frac = (m[2] or "0")[:6].ljust(6, "0")
    tz = m[3] or "Z"
    return datetime.fromisoformat(f"{m[1]}.{frac}{'+00:00' if tz == 'Z' else tz}")



# ---- a developer's driver beside the probe (`--with-driver`) ------------------------------
#
# Plain sc.exe and reg.exe argument vectors (`Transport.run_argv`) and `Transport.put`: no
# PowerShell, so nothing here depends on the probe-control script. Not yet run on Windows:
# tested against the WinRM double's model of sc.exe and reg.exe only.

#: Where a developer's driver is copied in the guest.
OWN_DRIVER_DIR = r"C:\hotadd\drivers"
RECORDS_DIR = r"C:\ProgramData\HotAddProbe"
#: sc.exe's exit codes are Win32 error codes ("System Error Codes (1000-1299)",
#: https://learn.microsoft.com/en-us/windows/win32/debug/system-error-codes--1000-1299-).
ERROR_SERVICE_EXISTS = 1073
ERROR_SERVICE_NOT_ACTIVE = 1062
ERROR_SERVICE_ALREADY_RUNNING = 1056
ERROR_INVALID_IMAGE_HASH = 577  # the driver is not signed in a way this guest accepts


def own_driver_path(name: str) -> str:
    return f"{OWN_DRIVER_DIR}\\{name}.sys"


def writer_records_path(writer: str) -> str:
    """A recorder's records file (driver/recorder/, docs/record-format.md "Streams")."""
    return f"{RECORDS_DIR}\\records-{writer}.jsonl"


def _sc(transport: Transport, *args: str, ok: tuple[int, ...] = (0,)) -> CommandResult:
    res = transport.run_argv(["sc.exe", *args])
    if res.rc not in ok:
        fix = ("test-sign the driver (driver/sign-test.ps1) or build it signed; the guest "
               "runs with test signing on" if res.rc == ERROR_INVALID_IMAGE_HASH else
               "read sc.exe's message above")
        raise TransportError(f"sc.exe {' '.join(args[:2])} failed ({res.rc}): "
                             f"{(res.stdout + res.stderr).strip()[-500:]}", fix)
    return res


def install_own_driver(transport: Transport, local: Path, name: str,
                       params: tuple[tuple[str, str], ...]) -> None:
    """Copy the .sys in, create (or re-point) its demand-start kernel service and write its
    Parameters: a whole number as REG_DWORD, anything else as REG_SZ ("sc.exe create",
    https://learn.microsoft.com/en-us/windows-server/administration/windows-commands/sc-create;
    "reg add", https://learn.microsoft.com/en-us/windows-server/administration/
    windows-commands/reg-add)."""
    target = own_driver_path(name)
    transport.put(local, target)
    config = ("type=", "kernel", "start=", "demand", "binPath=", target)
    if _sc(transport, "create", name, *config, ok=(0, ERROR_SERVICE_EXISTS)).rc != 0:
        _sc(transport, "config", name, *config)
    key = f"HKLM\\SYSTEM\\CurrentControlSet\\Services\\{name}\\Parameters"
    for value_name, value in params:
        kind = "REG_DWORD" if value.isdigit() and int(value) <= 0xFFFF_FFFF else "REG_SZ"
        res = transport.run_argv(["reg.exe", "add", key, "/v", value_name, "/t", kind,
                                  "/d", value, "/f"])
        if not res.ok:
            raise TransportError(f"reg.exe add {value_name} failed ({res.rc}): "
                                 f"{(res.stdout + res.stderr).strip()[-300:]}",
                                 "check the parameter's name and value")


def start_own_driver(transport: Transport, name: str) -> None:
    _sc(transport, "start", name)


def stop_own_driver(transport: Transport, name: str) -> None:
    _sc(transport, "stop", name, ok=(0, ERROR_SERVICE_NOT_ACTIVE))


def own_driver_running(transport: Transport, name: str) -> bool:
    """`sc.exe query NAME` says STATE ... RUNNING."""
    res = _sc(transport, "query", name)
    return re.search(r"STATE\s*:\s*4\s+RUNNING", res.stdout) is not None


def read_writer_records(transport: Transport, writer: str) -> str:
    """A recorder's records file ("" if it wrote none)."""
    return read_records(transport, writer_records_path(writer))

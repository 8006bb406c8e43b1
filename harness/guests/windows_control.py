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
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from harness.errors import GuestNotReady, InputError, TransportError
from harness.guests.base import ClockSample
from harness.paths import REPO_ROOT
from harness.transport.base import CommandResult, Transport
from harness.transport.winrm import (
    RemoteFileMissing,
    encoded_command,
    fetch_by_chunks,
    run_powershell,
)

VM_DIR = REPO_ROOT / "vm" / "windows"
PROBE_SCRIPT = VM_DIR / "hotadd-probe.ps1"
#: Oldest Windows build the probe loads on: Server 2019 (17763) ships KMDF 1.27, which the
#: driver is built against; Server 2016 (14393) ships KMDF 1.19.
MIN_BUILD = 17763
RECORDS_PATH = r"C:\ProgramData\HotAddProbe\records.jsonl"
SERVICE_NAME = "HotAddProbe"
PROVISION_LOG = r"C:\ProgramData\HotAdd\provision.log"


@dataclass(frozen=True)
class ProbeParameters:
    """The driver service's Parameters values (driver/probe_public.h); None = leave unset."""

    flags: int = 1
    veto_index: int | None = None
    veto_status: int | None = None
    veto_during_replay: bool | None = None

    def call(self) -> str:
        def num(v: int | bool | None) -> int:
            return -1 if v is None else int(v)

        return (f"Set-HotAddProbeParameters -Flags {self.flags} -VetoIndex "
                f"{num(self.veto_index)} -VetoStatus {num(self.veto_status)} "
                f"-VetoDuringReplay {num(self.veto_during_replay)}")


@dataclass(frozen=True)
class ServiceStart:
    started: bool
    code: int
    state: str
    message: str


@dataclass(frozen=True)
class DriverInstall:
    path: str
    signed_in_guest: bool
    signature: str


@dataclass(frozen=True)
class ProcessorCount:
    """Counts read in a fresh guest process: WMI's, the kernel's (all groups), .NET's."""

    logical: int
    active_all_groups: int
    environment: int


class VbsStatus(enum.IntEnum):
    """Win32_DeviceGuard.VirtualizationBasedSecurityStatus."""

    OFF = 0
    ENABLED_NOT_RUNNING = 1
    RUNNING = 2


@dataclass(frozen=True)
class Preflight:
    product: str
    edition: str
    build: int
    installation_type: str
    dyn_processor_enabled: bool
    licence_dynamic_partitioning: int | None
    test_signing: bool | None
    secure_boot: bool | None
    wdf_version: str
    logical_processors: int
    last_boot_utc: str
    vbs_status: VbsStatus | None = None  # None: the guest could not tell

    def check(self) -> Preflight:
        """This preflight, or InputError if the guest is too old for the probe."""
        if self.build < MIN_BUILD:
            raise InputError(
                f"the guest is Windows build {self.build} ({self.product}); the probe needs "
                f"build {MIN_BUILD} (Server 2019) or later: Server 2016 ships KMDF 1.19 and "
                "the driver needs KMDF 1.27",
                "build the image from Windows Server 2019, 2022 or 2025 media")
        return self


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
    """The clock handshake: one command, timed by the host around it (None: the driver's
    load record has no qpc)."""
    command = encoded_command(clock_script())
    before = time.time()
    res = transport.run(command, timeout=60.0)
    after = time.time()
    if res.rc == NO_CLOCK_RC:
        return None
    res.check()
    try:
        return ClockSample(t_ns=int(res.stdout.strip()), host_before=before, host_after=after)
    except ValueError:
        raise TransportError(f"the clock handshake answered {res.stdout.strip()[:100]!r}",
                             "run the clock snippet by hand in the guest") from None


def install_driver(transport: Transport, source: str) -> DriverInstall:
    """Copy the .sys (a path, or a file name on any drive), sign it if unsigned, create the
    kernel service."""
    d = probe_control(transport, f"Install-HotAddProbe -Source {ps_literal(source)}")
    return DriverInstall(path=str(d["path"]), signed_in_guest=bool(d["signed_in_guest"]),
                         signature=str(d["signature"]))


def set_parameters(transport: Transport, params: ProbeParameters) -> dict[str, int]:
    return {str(k): int(v) for k, v in probe_control(transport, params.call()).items()}


def start_service(transport: Transport) -> ServiceStart:
    d = probe_control(transport, "Start-HotAddProbe")
    return ServiceStart(bool(d["started"]), int(d["code"]), str(d["state"]), str(d["message"]))


def stop_service(transport: Transport) -> None:
    probe_control(transport, "Stop-HotAddProbe")


def read_records(transport: Transport) -> str:
    """The records file of the last probe load ("" if the probe never wrote one). Fetched
    with cmd.exe command lines, so any Windows transport works (not only WinRM's fetch)."""
    with tempfile.TemporaryDirectory(prefix="hotadd-records-") as tmp:
        local = Path(tmp) / "records.jsonl"
        try:
            fetch_by_chunks(transport, RECORDS_PATH, local)
        except RemoteFileMissing:
            return ""
        return local.read_text(encoding="utf-8", errors="replace")


def processor_count(transport: Transport) -> ProcessorCount:
    """Processor counts from a fresh process in a fresh shell (a new WinRM shell / SSH
    connection: the old one may be a process that predates the hot-add)."""
    transport.close()
    d = probe_control(transport, "Get-HotAddProcessorCount")
    return ProcessorCount(int(d["logical"]), int(d["active_all_groups"]), int(d["environment"]))


def preflight(transport: Transport, timeout: float = 300.0) -> Preflight:
    """Can the guest take CPU hot-add and load a test-signed driver (see hotadd-probe.ps1);
    InputError for a build older than MIN_BUILD."""
    d = probe_control(transport, "Get-HotAddPreflight", timeout)
    try:
        return Preflight(
            product=str(d["product"]), edition=str(d["edition"]), build=int(d["build"]),
            installation_type=str(d["installation_type"]),
            dyn_processor_enabled=bool(d["dyn_processor_enabled"]),
            licence_dynamic_partitioning=_opt_int(d.get("licence_dynamic_partitioning")),
            test_signing=_opt_bool(d.get("test_signing")),
            secure_boot=_opt_bool(d.get("secure_boot")), wdf_version=str(d["wdf_version"]),
            logical_processors=int(d["logical_processors"]),
            last_boot_utc=str(d["last_boot_utc"]),
            vbs_status=None if d.get("vbs_status") is None else VbsStatus(d["vbs_status"]),
        ).check()
    except (KeyError, TypeError, ValueError) as exc:
        raise TransportError(f"unexpected preflight answer from the guest ({exc}): {d}",
                             "compare vm/windows/hotadd-probe.ps1 with the guest's copy") from None


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


def _opt_bool(v: Any) -> bool | None:
    return None if v is None else bool(v)


def wait_provisioned(transport: Transport, timeout: float,
                     still_alive: Callable[[], None] | None = None) -> dict[str, Any]:
    """Wait until the provisioning marker exists and the guest booted after writing it."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if still_alive is not None:
            still_alive()
        try:
            d = probe_control(transport, "Get-HotAddProvisioning", timeout=120)
            marker = d.get("marker")
            if marker and _utc(d["last_boot_utc"]) > _utc(str(marker["provisioned_utc"])):
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


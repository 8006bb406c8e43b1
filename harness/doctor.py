"""The checks behind `hotadd doctor`: what this host can do for hotadd, and what to install.

Each line is a `Finding` with ok/missing and, when missing, the fix. The checks are cheap
(no guest is booted) so a lab can run this on every host before scheduling work on it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness import paths
from harness.errors import HotaddError
from harness.host.domain import OVMF_CODE, OVMF_VARS, default_emulator


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _qemu_version(emulator: str) -> Check:
    try:
        out = subprocess.run([emulator, "--version"], capture_output=True, text=True,
                             timeout=10, check=False).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return Check("QEMU", False, f"{emulator} does not run",
                     "apt-get install qemu-system-x86")
    return Check("QEMU", True, f"{out} ({emulator})")


def _hotpluggable_cpu_types(emulator: str) -> Check:
    """Ask QEMU itself (no libvirt, no guest) which CPU types q35 can hot-plug."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        qmp = (
            '{"execute":"qmp_capabilities"}\n'
            '{"execute":"query-hotpluggable-cpus"}\n'
            '{"execute":"quit"}\n'
        )
        try:
            proc = subprocess.run(
                [emulator, "-machine", "q35", "-accel", "tcg", "-smp", "1,maxcpus=2",
                 "-display", "none", "-nodefaults", "-S", "-qmp", "stdio"],
                input=qmp, capture_output=True, text=True, timeout=30, check=False, cwd=tmp)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Check("hot-pluggable CPUs", False, f"QEMU did not answer QMP: {exc}",
                         "apt-get install qemu-system-x86")
    types: set[str] = set()
    for line in proc.stdout.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        for slot in msg.get("return", []) if isinstance(msg.get("return"), list) else []:
            types.add(str(slot.get("type")))
    if not types:
        return Check("hot-pluggable CPUs", False, "QEMU reports no hot-pluggable CPU slots on q35",
                     "use a QEMU with CPU hot-plug (>= 2.7)")
    return Check("hot-pluggable CPUs", True, "q35 slots of type " + ", ".join(sorted(types)))


def _libvirt() -> Check:
    from harness.host.connection import default_uri, open_connection, versions

    uri = default_uri()
    try:
        conn = open_connection(uri)
    except HotaddError as exc:  # unreachable, or an unusable URI, root or cache
        return Check("libvirt", False, exc.problem, exc.fix or "")
    try:
        v = versions(conn)
    finally:
        conn.close()
    return Check("libvirt", True, f"libvirt {v.libvirt}, QEMU driver {v.qemu} at {uri}")


def _accel() -> Check:
    from harness.host.accel import kvm_status
    from harness.host.domain import Accelerator

    status = kvm_status()
    if status.accelerator is Accelerator.KVM:
        return Check("accelerator", True, f"kvm: {status.reason}")
    return Check("accelerator", True, f"tcg (software): {status.reason}. The reference guest "
                 "runs; a Windows guest needs a KVM host",
                 "for Windows: a host with vmx/svm and /dev/kvm")


def _file(name: str, path: Path, fix: str) -> Check:
    return Check(name, path.exists(), str(path) + ("" if path.exists() else " missing"),
                 "" if path.exists() else fix)


def _tool(name: str, command: str, fix: str) -> Check:
    found = shutil.which(command)
    return Check(name, found is not None, found or f"{command} not on PATH",
                 "" if found else fix)


def _disk() -> Check:
    try:
        cache = paths.cache_dir()
    except HotaddError as exc:  # a doctor reports an unusable cache, it does not stop at it
        return Check("cache directory", False, exc.problem, exc.fix or "")
    usage = shutil.disk_usage(cache)
    free_gib = usage.free / 2**30
    ok = free_gib >= 2
    return Check("disk space", ok, f"{free_gib:.1f} GiB free in {cache} "
                 "(reference guest ~0.2 GiB; a Windows golden image 10-20 GiB)",
                 "" if ok else "free space or set HOTADD_CACHE_DIR to a bigger disk")


def _reference_guest() -> Check:
    from harness.guests import reference

    headers = Path("/usr/src").glob("linux-headers-*-amd64")
    if not any(headers):
        return Check("reference guest", False, "no Debian kernel headers to build the probe",
                     "apt-get install linux-headers-amd64 (or ./setup.sh install)")
    return Check("reference guest", True, f"buildable from {reference.SOURCE_DIR}")


def run_checks() -> list[Check]:
    emulator = default_emulator()
    return [
        _qemu_version(emulator),
        _libvirt(),
        _accel(),
        _hotpluggable_cpu_types(emulator),
        _file("OVMF (UEFI, no Secure Boot)", OVMF_CODE, "apt-get install ovmf"),
        _file("OVMF variable template", OVMF_VARS, "apt-get install ovmf"),
        _tool("qemu-img", "qemu-img", "apt-get install qemu-utils"),
        _tool("xorriso (Windows provisioning ISO)", "xorriso", "apt-get install xorriso"),
        _tool("7-Zip (reading Windows ISOs and their install.wim)", "7zz", "apt-get install 7zip"),
        _tool("virt-xml-validate", "virt-xml-validate", "apt-get install libvirt-clients"),
        _reference_guest(),
        _disk(),
    ]


def render(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{'ok ' if c.ok else 'NO '} {c.name:<{width}}  {c.detail}")
        if c.fix:
            lines.append(f"    {'':<{width}}  -> {c.fix}")
    missing = [c for c in checks if not c.ok]
    lines.append("")
    lines.append("this host is ready for hotadd" if not missing else
                 f"{len(missing)} thing(s) missing: ./setup.sh install installs them all")
    return "\n".join(lines)

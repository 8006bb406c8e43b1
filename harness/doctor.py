"""The checks behind `hotadd doctor`: what this host can do for hotadd, and what to install.

Each line is a `Finding` with ok/missing and, when missing, the fix. The checks are cheap
(no guest is booted) so a lab can run this on every host before scheduling work on it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness import paths
from harness.errors import HotaddError
from harness.host.domain import OVMF_CODE, OVMF_VARS, default_emulator
from harness.host.remote import HostCaps
from harness.host.target import LOCAL, HostTarget


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    @classmethod
    def failed(cls, name: str, exc: HotaddError) -> Check:
        """A check that an error answered: its problem and fix."""
        return cls(name, False, exc.problem, exc.fix or "")


def _qemu_version(emulator: str) -> Check:
    try:
        out = subprocess.run([emulator, "--version"], capture_output=True, text=True,
                             timeout=10, check=False).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return Check("QEMU", False, f"{emulator} does not run",
                     "apt-get install qemu-system-x86")
    return Check("QEMU", True, f"{out} ({emulator})")


def _hotpluggable_cpu_types(emulator: str, target: HostTarget = LOCAL) -> Check:
    """Ask QEMU itself on the host (no libvirt, no guest) which CPU types q35 can hot-plug:
    QMP on its stdin, `-S` so no guest code runs."""
    qmp = (
        '{"execute":"qmp_capabilities"}\n'
        '{"execute":"query-hotpluggable-cpus"}\n'
        '{"execute":"quit"}\n'
    )
    where = "" if not target.remote else f" on {target.description}"
    out = target.run([emulator, "-machine", "q35", "-accel", "tcg", "-smp", "1,maxcpus=2",
                      "-display", "none", "-nodefaults", "-S", "-qmp", "stdio"],
                     timeout=30, stdin=qmp)
    types: set[str] = set()
    for line in out.stdout.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        for slot in msg.get("return", []) if isinstance(msg.get("return"), list) else []:
            types.add(str(slot.get("type")))
    if not types and not out.stdout.strip():
        return Check("hot-pluggable CPUs", False,
                     f"QEMU did not answer QMP{where}: {out.stderr.strip()[:200]}",
                     "apt-get install qemu-system-x86" + (" on that host" if where else ""))
    if not types:
        return Check("hot-pluggable CPUs", False,
                     f"QEMU reports no hot-pluggable CPU slots on q35{where}",
                     "use a QEMU with CPU hot-plug (>= 2.7)")
    return Check("hot-pluggable CPUs", True, "q35 slots of type " + ", ".join(sorted(types)))


def _libvirt(uri: str | None = None) -> Check:
    from harness.host.connection import default_uri, open_connection, versions

    uri = uri or default_uri()
    try:
        conn = open_connection(uri)
    except HotaddError as exc:  # unreachable, or an unusable URI, root or cache
        return Check.failed("libvirt", exc)
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
        return Check.failed("cache directory", exc)
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


def run_checks(uri: str | None = None) -> list[Check]:
    """This machine's checks; `uri` is the libvirt to open (default: the default URI)."""
    emulator = default_emulator()
    return [
        _qemu_version(emulator),
        _libvirt(uri),
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


# --- a remote libvirt host (`hotadd doctor --host qemu+ssh://...`) ----------------------------

def run_host_checks(uri: str) -> list[Check]:
    """What a remote host can do for hotadd, seen from here: the URI, the SSH login, its
    libvirt, emulator, accelerator, firmware and qemu-img, the staging cache (writable, others
    may search it, free space), and the controller's own part (building the reference guest).
    A check that fails for want of an earlier one (no login: no libvirt) ends the list."""
    from harness.host.connection import check_uri
    from harness.host.target import SshAddress, SshHost, check_remote_uri

    try:
        check_uri(uri)
        check_remote_uri(uri)
        address = SshAddress.of(uri)
    except HotaddError as exc:
        return [Check.failed("libvirt URI", exc)]
    checks = [Check("libvirt URI", True, uri)]
    target = SshHost(address)
    try:
        checks.append(_ssh_login(target))
        caps = _host_libvirt(uri, target, checks) if checks[-1].ok else None
        if caps is None:
            return checks
        ovmf = str(OVMF_CODE) in caps.loaders
        checks += [_host_emulator(target, caps), _host_accel(target, caps),
                   _hotpluggable_cpu_types(caps.emulator, target),
                   Check("OVMF (UEFI, Windows guests)", ovmf,
                         f"{OVMF_CODE} known to libvirt" if ovmf
                         else f"{OVMF_CODE} unknown to libvirt there",
                         "" if ovmf else "apt-get install ovmf on that host"),
                   _host_tool(target, "qemu-img (Windows overlays)", ["qemu-img", "--version"],
                              "apt-get install qemu-utils on that host"),
                   _host_tool(target, "flock (capacity leases)", ["flock", "--version"],
                              "apt-get install util-linux on that host"),
                   _host_tool(target, "GNU dd (saved guests)", ["dd", "--version"],
                              "apt-get install coreutils on that host (byte offsets: "
                              "iflag=skip_bytes)"),
                   _host_cache(target), _host_disk(target)]
    finally:
        target.close()
    return [*checks, _reference_guest(), _disk()]


def _host_libvirt(uri: str, target: HostTarget, checks: list[Check]) -> HostCaps | None:
    """Append the libvirt check (and the emulator's, if libvirt offers none); the host's
    domain capabilities, or None when a check failed."""
    from harness.host.connection import open_connection, versions
    from harness.host.remote import host_caps

    name = "libvirt"
    try:
        conn = open_connection(uri)
        try:
            v = versions(conn)
            checks.append(Check(name, True, f"libvirt {v.libvirt}, QEMU driver {v.qemu} on "
                                            f"{target.description}"))
            name = "emulator"
            return host_caps(conn)
        finally:
            conn.close()
    except HotaddError as exc:
        checks.append(Check.failed(name, exc))
        return None


def _ssh_login(target: HostTarget) -> Check:
    try:
        out = target.run(["true"], timeout=30)
    except HotaddError as exc:
        return Check.failed("SSH login", exc)
    if out.rc != 0:
        return Check("SSH login", False, f"{target.description} logged in but 'true' "
                     f"exited {out.rc}: {out.stderr.strip()[:200]}",
                     "give the login a normal shell (libvirt's ssh transport needs one too)")
    return Check("SSH login", True, f"{target.description}, without a password")


def _host_emulator(target: HostTarget, caps: HostCaps) -> Check:
    out = target.run([caps.emulator, "--version"], timeout=30)
    first = out.stdout.splitlines()[0] if out.rc == 0 and out.stdout.strip() else ""
    if not first:
        return Check("emulator", False, f"{caps.emulator} (libvirt's) does not run on "
                     f"{target.description}: {out.stderr.strip()[:200]}",
                     "apt-get install qemu-system-x86 on that host, restart libvirtd")
    return Check("emulator", True, f"{first} ({caps.emulator})")


def _host_accel(target: HostTarget, caps: HostCaps) -> Check:
    from harness.host.domain import Accelerator
    from harness.host.remote import resolve_accel

    choice = resolve_accel(Accelerator.AUTO, caps, target)
    if choice.accelerator is Accelerator.KVM:
        return Check("accelerator", True, f"kvm: {choice.reason}")
    return Check("accelerator", True, f"tcg (software): {choice.reason}. The reference guest "
                 "runs; a Windows guest needs a KVM host",
                 "for Windows: a host with vmx/svm and /dev/kvm")


def _host_tool(target: HostTarget, name: str, argv: list[str], fix: str) -> Check:
    out = target.run(argv, timeout=30)
    text = (out.stdout or out.stderr).strip().splitlines()
    if out.rc != 0:
        return Check(name, False, f"{argv[0]} does not run on {target.description}", fix)
    return Check(name, True, text[0] if text else argv[0])


def _host_cache(target: HostTarget) -> Check:
    """The staging cache: created if missing, a file written and removed, and every directory
    down to it searchable by others (QEMU under the system libvirtd opens files there)."""
    from harness.host import staging
    from harness.host.target import REMOTE_CACHE_ENV

    root = target.cache_root()
    fix = (f"let the SSH login create and write {root} on that host, or set "
           f"{REMOTE_CACHE_ENV} to a directory it may write")
    probe = staging.files_dir(target) / f".doctor-{os.getpid()}"
    try:
        target.mkdir(staging.files_dir(target))
        target.write_text(probe, "hotadd doctor\n")
        target.remove(probe)
        blocked = target.unsearchable(root)
    except HotaddError as exc:
        return Check("staging cache", False, exc.problem, fix)
    if blocked is not None:
        return Check("staging cache", False, f"{blocked} on {target.description} is not "
                     "searchable by other users: QEMU under the system libvirtd could not open "
                     "the staged files", f"chmod o+x {blocked} there, or set {REMOTE_CACHE_ENV}")
    return Check("staging cache", True, f"{root} on {target.description} is writable and "
                 "searchable by QEMU's user")


def _host_disk(target: HostTarget) -> Check:
    from harness.host import staging

    root = target.cache_root()
    out = target.run(["df", "-Pk", "--", str(root)], timeout=30)
    try:
        free_gib = int(out.stdout.splitlines()[1].split()[3]) / 2**20
    except (IndexError, ValueError):
        return Check("host disk space", False, f"df on {target.description} did not say how "
                     f"much is free under {root}: {out.stderr.strip()[:200]}",
                     "check the staging cache directory exists there")
    bound = staging.limit_bytes() / 2**30
    ok = free_gib >= 2
    return Check("host disk space", ok, f"{free_gib:.1f} GiB free in {root} on "
                 f"{target.description} (staged files are kept up to {bound:.0f} GiB, "
                 f"{staging.MAX_ENV}; a Windows golden image 10-20 GiB)",
                 "" if ok else "free space there, or set HOTADD_REMOTE_CACHE_DIR to a bigger "
                 "disk")


def render(checks: list[Check], host: str | None = None) -> str:
    """The checks for people; `host` is the remote host's URI they are of (None: this one)."""
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{'ok ' if c.ok else 'NO '} {c.name:<{width}}  {c.detail}")
        if c.fix:
            lines.append(f"    {'':<{width}}  -> {c.fix}")
    missing = [c for c in checks if not c.ok]
    lines.append("")
    if host is not None:
        lines.append(f"{host} is ready for hotadd" if not missing else
                     f"{len(missing)} thing(s) missing or wrong: each says its fix")
    else:
        lines.append("this host is ready for hotadd" if not missing else
                     f"{len(missing)} thing(s) missing: ./setup.sh install installs them all")
    return "\n".join(lines)

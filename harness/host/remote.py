"""A domain on a remote libvirt host: its facts from libvirt, its files staged there.

On this machine hotadd reads the accelerator, emulator and firmware from the filesystem
(`harness.host.accel`, `domain.default_emulator`); a remote host may differ, so there they
come from libvirt's domain capabilities (`virConnectGetDomainCapabilities`,
https://libvirt.org/formatdomaincaps.html) and the host's own /proc/cpuinfo. `place` turns a
guest kind's domain spec (local paths) into the host's: input files staged by content
(`harness.host.staging`); the NIC's forwards are on ports its QEMU binds on the host's
127.0.0.1 (`Forward`; the transports reach them over the host's SSH). The serial console needs
no file there: it comes over libvirt's connection into the local run directory
(`harness.host.console.ConsoleStream`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import libvirt

from harness.errors import InfrastructureError, InputError
from harness.host import accel, staging
from harness.host.accel import AccelChoice, cpu_flags_have_virt
from harness.host.domain import (
    OVMF_CODE,
    Accelerator,
    DirectBoot,
    DomainSpec,
    Firmware,
)
from harness.host.saved import file_digest
from harness.host.target import (
    REMOTE_CACHE_DEFAULT,
    REMOTE_CACHE_ENV,
    HostTarget,
    check_remote_uri,
    is_remote_uri,
)


def check_run(uri: str) -> None:
    """Refuse, before anything starts, a run a remote host cannot do. Every guest kind can
    run there: the reference guest's kernel and initramfs, or Windows' golden image, NVRAM
    and driver CD, are sent there (`place`, `WindowsKind`)."""
    if not is_remote_uri(uri):
        return
    check_remote_uri(uri)


@dataclass(frozen=True)
class HostCaps:
    """What the host's libvirt says its QEMU can do (domain capabilities)."""

    emulator: str
    kvm: bool  # libvirt offers domain type kvm (the device exists for its QEMU)
    loaders: tuple[str, ...]  # UEFI firmware images it knows


def host_caps(conn: libvirt.virConnect) -> HostCaps:
    def caps(virttype: str) -> ET.Element | None:
        try:
            raw = conn.getDomainCapabilities(None, "x86_64", "q35", virttype, 0)
        except libvirt.libvirtError:
            return None
        return ET.fromstring(raw)

    tcg = caps("qemu")
    if tcg is None:
        raise InfrastructureError(
            f"libvirt at {conn.getURI()} offers no x86_64 q35 QEMU guests",
            "install qemu-system-x86 on that host (and restart libvirtd)")
    kvm = caps("kvm")
    return HostCaps(emulator=tcg.findtext("path") or "",
                    kvm=kvm is not None,
                    loaders=tuple(v.text or "" for v in tcg.iterfind("./os/loader/value")))


def resolve_accel(requested: Accelerator, caps: HostCaps, target: HostTarget) -> AccelChoice:
    """`harness.host.accel.resolve` for a remote host: KVM needs libvirt to offer it and the
    host's CPU to show vmx/svm (a nested host's /dev/kvm hangs guests)."""
    try:
        cpuinfo = target.read_text(Path("/proc/cpuinfo"))
    except InfrastructureError:
        cpuinfo = ""
    if not caps.kvm:
        status = AccelChoice(Accelerator.TCG, f"libvirt on {target.description} offers no KVM")
    elif not cpu_flags_have_virt(cpuinfo):
        status = AccelChoice(Accelerator.TCG, f"{target.description}'s CPU shows neither vmx "
                                              "nor svm (nested virtualisation is off)")
    else:
        status = AccelChoice(Accelerator.KVM, f"KVM on {target.description}")
    return accel.resolve(requested, status)


@dataclass(frozen=True)
class Placement:
    """The domain spec libvirt on the host is given (its files there; its serial log is
    still the local run directory's, which the console stream fills) and what was staged."""

    spec: DomainSpec
    staged: tuple[staging.Staged, ...]


def place(target: HostTarget, spec: DomainSpec, scratch: Path, caps: HostCaps) -> Placement:
    """Stage `spec`'s input files on the host and rewrite its host-side parts there.
    `scratch` is the run's scratch dir on the host (files there are the run's own: a guest
    kind made them there, `HardwareRequest.host`)."""
    _check_placeable(target, spec, scratch, caps)
    staged: dict[Path, staging.Staged] = {}
    for path in spec.input_files():
        if not path.is_relative_to(scratch) and path not in staged:
            staged[path] = staging.stage(target, path)
    with contextlib.suppress(InfrastructureError):
        staging.trim(target, keep={s.remote for s in staged.values()})
    return _rewritten(target, spec, scratch, {p: s.remote for p, s in staged.items()},
                      tuple(staged.values()))


def planned_placement(target: HostTarget, spec: DomainSpec, scratch: Path,
                      caps: HostCaps) -> Placement:
    """`place` without sending anything (`--print-xml`): each input file named by the path
    staging would give it, `CACHE/files/<sha256>`, or `CACHE/files/<name>.sha256` for a file
    not built yet (its content, so its name there, is not known)."""
    _check_placeable(target, spec, scratch, caps)
    files = staging.files_dir(target)
    moved = {p: files / (file_digest(p) if p.is_file() else f"{p.name}.sha256")
             for p in spec.input_files() if not p.is_relative_to(scratch)}
    return _rewritten(target, spec, scratch, moved, ())


def _check_placeable(target: HostTarget, spec: DomainSpec, scratch: Path,
                     caps: HostCaps) -> None:
    if spec.firmware is Firmware.UEFI:
        if spec.nvram is None or not spec.nvram.is_relative_to(scratch):
            raise InputError("a UEFI guest on a remote host needs its NVRAM copy in the run's "
                             "scratch dir there", "build the domain spec with "
                             "HardwareRequest.host set to the remote host")
        if str(OVMF_CODE) not in caps.loaders:
            raise InputError(f"{target.description}'s libvirt knows no UEFI firmware "
                             f"{OVMF_CODE} (it has: {', '.join(caps.loaders) or 'none'})",
                             "apt-get install ovmf on that host")
    existing = scratch  # --print-xml: the run's dirs do not exist yet (made searchable later)
    while not target.exists(existing):
        existing = existing.parent
    blocked = target.unsearchable(existing)
    if blocked is not None:
        raise InputError(f"{blocked} on {target.description} is not searchable by other users: "
                         "QEMU under its system libvirtd runs as an unprivileged user and could "
                         "not open the run's files", f"chmod o+x {blocked} there, or set "
                         f"{REMOTE_CACHE_ENV} to a directory others can search (the default "
                         f"{REMOTE_CACHE_DEFAULT})")


def _rewritten(target: HostTarget, spec: DomainSpec, scratch: Path, moved: dict[Path, Path],
               staged: tuple[staging.Staged, ...]) -> Placement:
    """`spec` with its input files at `moved`'s paths on the host (its forwards ask QEMU
    there for a free port, and its console is read through libvirt's stream)."""
    boot = spec.direct_boot
    if boot is not None:
        boot = DirectBoot(moved[boot.kernel], moved[boot.initrd], boot.cmdline)
    disks = tuple(dataclasses.replace(d, path=moved.get(d.path, d.path)) for d in spec.disks)
    if any(not d.readonly and d.path in moved.values() for d in disks):
        raise InputError("a writable disk would be the host's shared staged copy",
                         "give the guest an overlay in the run's scratch dir")
    cdroms = tuple(dataclasses.replace(c, path=moved.get(c.path, c.path)) for c in spec.cdroms)
    placed = dataclasses.replace(spec, direct_boot=boot, disks=disks, cdroms=cdroms,
                                 remote=True)
    return Placement(placed, staged)


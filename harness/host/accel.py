"""Choosing the accelerator honestly.

`/dev/kvm` existing (and even opening) is not enough: on nested machines without vmx/svm the
device is there but guests hang in the kernel decompressor, and libvirt's domcapabilities still
say KVM is fine. So "auto" requires both the device and the CPU flag.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from harness.errors import InputError
from harness.host.domain import Accelerator


@dataclass(frozen=True)
class AccelChoice:
    accelerator: Accelerator
    reason: str


def cpu_flags_have_virt(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo's text shows vmx or svm (on any host: harness.host.remote)."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = line.split(":", 1)[1].split()
            return "vmx" in flags or "svm" in flags
    return False


def _cpu_has_virt(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    try:
        return cpu_flags_have_virt(cpuinfo.read_text())
    except OSError:
        return False


def kvm_status() -> AccelChoice:
    """Whether KVM is usable here, and why (or why not)."""
    dev = Path("/dev/kvm")
    if not dev.exists():
        return AccelChoice(Accelerator.TCG, "/dev/kvm is absent (no KVM module or not exposed)")
    if not os.access(dev, os.R_OK | os.W_OK):
        return AccelChoice(Accelerator.TCG, "/dev/kvm is not readable and writable by this user "
                                            "(add the user to group kvm)")
    if not _cpu_has_virt():
        return AccelChoice(Accelerator.TCG, "/dev/kvm exists but the CPU shows neither vmx nor "
                                            "svm (nested virtualisation is off); KVM guests hang")
    return AccelChoice(Accelerator.KVM, "/dev/kvm is usable and the CPU has vmx/svm")


def resolve(requested: Accelerator, status: AccelChoice | None = None) -> AccelChoice:
    """Turn auto into kvm or tcg; refuse an explicit kvm that cannot work. `status` is what
    the host offers (default: this machine's `kvm_status()`; harness.host.remote for others)."""
    status = status if status is not None else kvm_status()
    if requested is Accelerator.AUTO:
        return status
    if requested is Accelerator.KVM and status.accelerator is not Accelerator.KVM:
        raise InputError(f"KVM was requested but is not usable: {status.reason}",
                         "run on a host with hardware virtualisation, or use --accel tcg")
    return AccelChoice(requested, "requested explicitly")

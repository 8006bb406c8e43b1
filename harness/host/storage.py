"""Per-run files: qcow2 overlays on read-only bases, NVRAM copies, and the run's scratch dir.

A run never writes to a base image; everything it creates lives in one scratch directory
named after its domain, so teardown and the leftover sweep remove exactly that. The scratch
dir is on the host QEMU runs on (`harness.host.target`: this machine, or a remote libvirt
host over SSH); `qemu-img` runs there too.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

from harness import paths
from harness.errors import InfrastructureError, InputError
from harness.host.domain import OVMF_VARS
from harness.host.target import LOCAL, HostTarget

OWNER_FILE = "owner.pid"


def scratch_root(host: HostTarget = LOCAL) -> Path:
    """The scratch dirs' parent on `host` (created and checked on this machine)."""
    return paths.scratch_dir() if not host.remote else host.cache_root() / "scratch"


def scratch_path(domain_name: str, host: HostTarget = LOCAL) -> Path:
    """Where a run's scratch directory is (or would be)."""
    return scratch_root(host) / domain_name


def run_scratch(domain_name: str, host: HostTarget = LOCAL) -> Path:
    """Create the scratch directory for a run and record which process owns it (on a remote
    host with this machine's name: the sweep there leaves other machines' runs alone)."""
    path = scratch_path(domain_name, host)
    if not host.remote:
        path.mkdir(parents=True, exist_ok=False)
        (path / OWNER_FILE).write_text(str(os.getpid()))
        return path
    host.mkdir(path, exist_ok=False)
    host.write_text(path / OWNER_FILE, f"{os.getpid()} {socket.gethostname()}")
    return path


def scratch_owner(text: str) -> tuple[int, str | None] | None:
    """(pid, host) from an owner file: "PID" (this machine) or "PID HOST" (remote hosts)."""
    fields = text.split()
    try:
        return int(fields[0]), (fields[1] if len(fields) > 1 else None)
    except (IndexError, ValueError):
        return None


def remove_scratch(path: Path, host: HostTarget = LOCAL) -> None:
    if not host.remote:
        shutil.rmtree(path, ignore_errors=True)
        return
    host.remove(path)


def overlay(base: Path, scratch: Path, name: str = "disk0.qcow2",
            host: HostTarget = LOCAL) -> Path:
    """A qcow2 overlay in `scratch` backed by `base` (which must exist and stays untouched),
    both on `host`."""
    if not (base.is_file() if not host.remote else host.exists(base)):
        raise InputError(f"base image {base} does not exist on {host.description}",
                         "build it first (hotadd image build / hotadd guest build) or fix the path")
    target = scratch / name
    fmt = _image_format(base, host)
    backing = str(base.resolve()) if not host.remote else str(base)
    proc = host.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", backing,
                     str(target)])
    if proc.rc != 0:
        raise InfrastructureError(f"qemu-img could not create an overlay on {base} "
                                  f"({host.description}): {proc.stderr.strip()}",
                                  "check the base image and disk space")
    return target


def _image_format(image: Path, host: HostTarget = LOCAL) -> str:
    proc = host.run(["qemu-img", "info", "--output=json", str(image)])
    if proc.rc != 0:
        raise InputError(f"{image} is not a disk image qemu-img can read: {proc.stderr.strip()}",
                         "give a qcow2 or raw image")
    fmt: str = json.loads(proc.stdout)["format"]
    return fmt


def nvram_copy(scratch: Path) -> Path:
    """A private copy of the OVMF variable store template (Secure Boot off)."""
    if not OVMF_VARS.exists():
        raise InputError(f"OVMF variable template {OVMF_VARS} is missing",
                         "apt-get install ovmf, or use --firmware bios")
    target = scratch / "OVMF_VARS.fd"
    shutil.copyfile(OVMF_VARS, target)
    return target

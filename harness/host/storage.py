"""Per-run files: qcow2 overlays on read-only bases, NVRAM copies, and the run's scratch dir.

A run never writes to a base image; everything it creates lives in one scratch directory
named after its domain, so teardown and the leftover sweep remove exactly that.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from harness import paths
from harness.errors import InfrastructureError, InputError
from harness.host.domain import OVMF_VARS

OWNER_FILE = "owner.pid"


def scratch_path(domain_name: str) -> Path:
    """Where a run's scratch directory is (or would be)."""
    return paths.scratch_dir() / domain_name


def run_scratch(domain_name: str) -> Path:
    """Create the scratch directory for a run and record which process owns it."""
    path = scratch_path(domain_name)
    path.mkdir(parents=True, exist_ok=False)
    (path / OWNER_FILE).write_text(str(os.getpid()))
    return path


def remove_scratch(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def overlay(base: Path, scratch: Path, name: str = "disk0.qcow2") -> Path:
    """A qcow2 overlay in `scratch` backed by `base` (which must exist and stays untouched)."""
    if not base.is_file():
        raise InputError(f"base image {base} does not exist",
                         "build it first (hotadd image build / hotadd guest build) or fix the path")
    target = scratch / name
    fmt = _image_format(base)
    proc = subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", str(base.resolve()),
         str(target)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise InfrastructureError(f"qemu-img could not create an overlay on {base}: "
                                  f"{proc.stderr.strip()}", "check the base image and disk space")
    return target


def _image_format(image: Path) -> str:
    import json

    proc = subprocess.run(["qemu-img", "info", "--output=json", str(image)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
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

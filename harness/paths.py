"""Where the harness keeps things on the host.

One per-user cache root holds the embedded libvirt state, built guests and base images, so
two users on one lab host never share QEMU processes. Override with HOTADD_CACHE_DIR.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """The per-user cache root (created on demand)."""
    env = os.environ.get("HOTADD_CACHE_DIR")
    if env:
        root = Path(env)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg) if xdg else Path.home() / ".cache") / "hotadd"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _subdir(name: str) -> Path:
    path = cache_dir() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def libvirt_embed_root() -> Path:
    """Root directory for `qemu:///embed` (libvirt's QEMU driver inside this process)."""
    return _subdir("libvirt")


def default_libvirt_uri() -> str:
    return f"qemu:///embed?root={libvirt_embed_root()}"


def guests_dir() -> Path:
    """Built guest artefacts (reference guest kernel/initramfs/keys, Windows golden images)."""
    return _subdir("guests")


def scratch_dir() -> Path:
    """Per-run disposable files (overlays, NVRAM copies) that the sweep may remove."""
    return _subdir("scratch")

"""Where the harness keeps things on the host.

One per-user cache root holds the embedded libvirt state, built guests and base images, so
two users on one lab host never share QEMU processes. Override with HOTADD_CACHE_DIR.

Naming a path never touches the disk (`--version`, `--help` and `hotadd check` work with an
unusable cache); the directory functions create and check what a command is about to use, and
raise an error naming the directory and the fix when it cannot be used.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from harness.errors import InfrastructureError

REPO_ROOT = Path(__file__).resolve().parent.parent
LIBVIRT_LOG = "libvirt.log"


def cache_root() -> Path:
    """The per-user cache root, as configured; nothing is created or checked."""
    env = os.environ.get("HOTADD_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "hotadd"


def _usable_dir(path: Path) -> Path:
    """Create `path` if needed and prove it takes files; InfrastructureError (exit 2) if not."""
    fix = (f"make {path} a writable directory, or point HOTADD_CACHE_DIR at one "
           "(e.g. HOTADD_CACHE_DIR=/var/tmp/hotadd)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # unnamed (O_TMPFILE): nobody else sees it
            pass
    except OSError as exc:
        raise InfrastructureError(
            f"the hotadd cache directory {path} is unusable: {exc.strerror or exc}", fix
        ) from None
    return path


def cache_dir() -> Path:
    """The per-user cache root, created and checked writable."""
    return _usable_dir(cache_root())


def _subdir(name: str) -> Path:
    cache_dir()
    return _usable_dir(cache_root() / name)


def libvirt_embed_root_path() -> Path:
    """Where the default `qemu:///embed` root lives (not created: `open_connection` does)."""
    return cache_root() / "libvirt"


def libvirt_embed_root() -> Path:
    """Root directory for `qemu:///embed` (libvirt's QEMU driver inside this process)."""
    return _subdir("libvirt")


def default_libvirt_uri() -> str:
    return f"qemu:///embed?root={libvirt_embed_root_path()}"


def libvirt_log_output() -> str | None:
    """The LIBVIRT_LOG_OUTPUTS value keeping libvirt's warnings in the cache, or None when the
    cache cannot take the file: libvirt refuses to load at all when it cannot open its log
    output, and `import libvirt` happens for every command, `--version` included."""
    root = cache_root()
    log = root / LIBVIRT_LOG
    writable = os.access(root, os.W_OK | os.X_OK) and (
        not log.exists() or (log.is_file() and os.access(log, os.W_OK)))
    return f"3:file:{log}" if root.is_dir() and writable else None


def guests_dir() -> Path:
    """Built guest artefacts (reference guest kernel/initramfs/keys, Windows golden images)."""
    return _subdir("guests")


def scratch_dir() -> Path:
    """Per-run disposable files (overlays, NVRAM copies) that the sweep may remove."""
    return _subdir("scratch")

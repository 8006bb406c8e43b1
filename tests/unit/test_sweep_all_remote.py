"""`hotadd sweep --all` visits the remote hosts runs used; one it cannot reach is reported and
does not fail the sweep of the rest. The real CLI on a real embedded libvirt root (no VM), and
a remote URI whose SSH port nothing listens on."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.paths import REPO_ROOT
from tests.support.processes import run_hotadd


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="hotadd-"))  # an embedded root: short
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port  # closed again: nothing listens there


def test_an_unreachable_remote_host_is_reported_not_fatal(short_tmp: Path) -> None:
    cache, root = short_tmp / "c", short_tmp / "r"
    cache.mkdir()
    gone = f"qemu+ssh://root@127.0.0.1:{_closed_port()}/system"
    (cache / "libvirt-uris").write_text(gone + "\n")
    env = {k: v for k, v in os.environ.items() if k != "LIBVIRT_LOG_OUTPUTS"}
    env |= {"HOTADD_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO_ROOT)}
    proc = run_hotadd("sweep", "--all", "--libvirt-uri", f"qemu:///embed?root={root}", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith(gone))
    assert "unreachable, not swept: cannot open libvirt" in line

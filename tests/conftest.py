"""Shared fixtures: a private embedded libvirt root per test session, the reference guest,
and the guarantee that no QEMU process outlives the suite.

libvirt allows one embedded root per process and one process per root, so each pytest session
gets its own root under the cache (named by pid); roots of sessions that died are swept by a
`hotadd sweep` subprocess at start. Tests that run `hotadd` as a subprocess give it a root of
its own (`cli_uri`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from harness import paths

TEST_ROOTS = paths.cache_dir() / "libvirt-tests"
SESSION_ROOT = TEST_ROOTS / str(os.getpid())
os.environ["HOTADD_LIBVIRT_URI"] = f"qemu:///embed?root={SESSION_ROOT}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The shipped scenarios (marked `hotadd` by the plugin) boot guests too: mark them `vm`."""
    for item in items:
        if item.get_closest_marker("hotadd"):
            item.add_marker(pytest.mark.vm)


def qemu_pids_mentioning(text: str) -> list[int]:
    """PIDs of running QEMU processes whose command line contains `text` (a root or a name)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "qemu-system" in cmdline and text in cmdline:
            pids.append(int(proc.name))
    return pids


def _sweep_dead_roots() -> None:
    for root in TEST_ROOTS.glob("*") if TEST_ROOTS.exists() else []:
        if not root.name.isdigit() or Path(f"/proc/{root.name}").exists():
            continue
        subprocess.run([sys.executable, "-m", "harness", "sweep", "--libvirt-uri",
                        f"qemu:///embed?root={root}"], check=False, capture_output=True)
        if not qemu_pids_mentioning(str(root)):
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def no_qemu_left_behind() -> Iterator[None]:
    """Fail the suite if any QEMU started under this session's libvirt root survives it."""
    _sweep_dead_roots()
    yield
    leftovers = qemu_pids_mentioning(str(SESSION_ROOT))
    assert not leftovers, f"QEMU processes left behind by the test suite: {leftovers}"
    shutil.rmtree(SESSION_ROOT, ignore_errors=True)


@pytest.fixture(scope="session")
def libvirt_uri() -> str:
    return os.environ["HOTADD_LIBVIRT_URI"]


@pytest.fixture(scope="session")
def conn(libvirt_uri: str):  # type: ignore[no-untyped-def]
    from harness.host.connection import open_connection

    c = open_connection(libvirt_uri)
    yield c
    c.close()


@pytest.fixture(scope="session")
def reference_image():  # type: ignore[no-untyped-def]
    from harness.guests import reference

    return reference.build()


@contextmanager
def short_root() -> Iterator[Path]:
    """A fresh embedded-libvirt root with a short path (QEMU's sockets live under it)."""
    root = Path(tempfile.mkdtemp(prefix="hotadd-lv-", dir="/tmp"))
    try:
        yield root
        assert not qemu_pids_mentioning(str(root)), f"hotadd left QEMU running under {root}"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def cli_uri() -> Iterator[str]:
    """A libvirt root for one `hotadd` subprocess; asserts it left no QEMU behind."""
    with short_root() as root:
        yield f"qemu:///embed?root={root}"


def run_hotadd(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the real CLI (`python -m harness ...`) and capture its output."""
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)

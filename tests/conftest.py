"""What every test folder shares: a private embedded libvirt root per test session, markers and
time budgets set by folder, the reference guest, and the guarantee that no QEMU outlives the
suite.

Folders decide what a test may do: `tests/unit/` boots nothing (a test there that starts a
domain fails at once, naming the folder it belongs in), `tests/driver/` builds and runs the
driver's C code on the host, `tests/vm/` and the shipped `tests/scenarios/` boot real guests
(marker `vm`). Every test has a time budget by marker (pytest-timeout), so a hang fails with a
stack instead of eating CI's time.

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
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import paths
from tests.support.processes import qemu_pids_mentioning, short_root

TEST_ROOTS = paths.cache_dir() / "libvirt-tests"
SESSION_ROOT = TEST_ROOTS / str(os.getpid())
os.environ["HOTADD_LIBVIRT_URI"] = f"qemu:///embed?root={SESSION_ROOT}"

TESTS = Path(__file__).resolve().parent
#: folder -> (marker, time budget in seconds). A test may ask for more with its own
#: `@pytest.mark.timeout(N)`; the budget is a ceiling for a hang, not a speed target.
FOLDERS = {
    "unit": (None, 60),
    "driver": ("driver", 300),
    "vm": ("vm", 900),
    "scenarios": ("vm", 900),
}


def _folder(item: pytest.Item) -> str:
    try:
        return item.path.resolve().relative_to(TESTS).parts[0]
    except ValueError:  # a pytester file in a temporary directory: not ours to classify
        return ""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark by folder and set each test's time budget. Shipped scenarios (marked `hotadd` by
    the plugin) boot guests too, wherever they live."""
    for item in items:
        marker, budget = FOLDERS.get(_folder(item), (None, 60))
        if item.get_closest_marker("hotadd"):
            marker, budget = "vm", FOLDERS["vm"][1]
        if marker is not None:
            item.add_marker(getattr(pytest.mark, marker))
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(budget))


@pytest.fixture(autouse=True)
def _unit_tests_boot_nothing(request: pytest.FixtureRequest,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A test outside the VM folders that tries to start a domain fails at once, so `-m "not
    vm"` stays quick and never needs QEMU."""
    if request.node.get_closest_marker("vm"):
        return
    from harness.host.machine import Machine

    def refuse(*_args: object, **_kwargs: object) -> None:
        pytest.fail(f"{request.node.nodeid} starts a domain: move it to tests/vm/ (marker vm)")

    monkeypatch.setattr(Machine, "start", refuse)


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


@pytest.fixture
def cli_uri() -> Iterator[str]:
    """A libvirt root for one `hotadd` subprocess; asserts it left no QEMU behind."""
    with short_root() as root:
        yield f"qemu:///embed?root={root}"

"""`hotadd run` refuses every bad option and combination before anything starts, through the
real CLI: exit 2, the problem and the fix, no traceback, no VM, no run directory written."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import run_hotadd


def refused(*args: str, cwd_run_dir: Path) -> str:
    proc = run_hotadd("run", "--quiet", "--run-dir", str(cwd_run_dir), *args, timeout=60)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "Traceback" not in output, output
    assert not (cwd_run_dir / "result.json").exists()
    assert not (cwd_run_dir / "domain.xml").exists()
    return output


@pytest.mark.parametrize(("args", "problem", "fix"), [
    (("--vcpu-ids", "3", "--adds", "2"), "1 vCPU ids given for 2 adds", "one id per add"),
    (("--vcpu-ids", ""), "is not a comma-separated list of vCPU ids", "leave --vcpu-ids out"),
    (("--vcpu-ids", "3,"), "is not a comma-separated list of vCPU ids", "leave --vcpu-ids out"),
    (("--veto-cpu", "99"), "--veto-cpu 99 is not a processor of this guest", "fix:"),
    (("--veto-cpu", "3", "--adds", "1"), "--veto-cpu 3 is never hot-added",
     "raise --adds to 2"),
    (("--veto-cpu", "0", "--no-add-existing"), "its Start is never called",
     "drop --no-add-existing"),
    (("--veto-status", "0xC000009A"), "--veto-status was given without --veto-cpu",
     "add --veto-cpu"),
    (("--veto-cpu", "3", "--veto-status", "0"), "'0' is not an NTSTATUS error code",
     "0x80000000..0xFFFFFFFF"),
    (("--veto-cpu", "3", "--veto-status", "-5"), "'-5' is not an NTSTATUS error code",
     "0x80000000..0xFFFFFFFF"),
    (("--veto-cpu", "3", "--veto-status", "0x1FFFFFFFF"), "'0x1FFFFFFFF' is not an NTSTATUS",
     "0x80000000..0xFFFFFFFF"),
    (("--veto-cpu", "3", "--veto-status", "0xC0000001"),
     "the reference guest cannot veto with status 0xC0000001", "use one of 0xC000000D"),
    (("--memory", "0"), "--memory: 0 must be greater than 0", "usage:"),
    (("--ack-timeout", "-1"), "--ack-timeout: -1 must be greater than 0", "usage:"),
    (("--image", "/nonexistent.qcow2"), "--image is for --guest windows only",
     "add --guest windows"),
    (("--driver", "/x.sys", "--image", "/y"), "--image and --driver are for --guest windows",
     "leave --image and --driver out"),
    (("--load-during-adds", "--adds", "0"), "--load-during-adds with no add",
     "give --adds N (at least 1)"),
    (("--load-during-adds", "--no-add-existing"), "an add that comes online before the "
     "register call is then seen nowhere", "drop --no-add-existing or --load-during-adds"),
    (("--load-during-adds", "--veto-cpu", "0"), "a replay veto fails the register call",
     "drop --veto-cpu or --load-during-adds"),
    (("--load-during-adds", "--veto-cpu", "2"), "depends on timing, not on the options",
     "drop --veto-cpu or --load-during-adds"),
])
def test_bad_option_is_refused_before_anything_starts(tmp_path: Path, args: tuple[str, ...],
                                                      problem: str, fix: str) -> None:
    output = refused(*args, cwd_run_dir=tmp_path / "run")
    assert problem in output and fix in output
    assert "0x-" not in output


@pytest.mark.parametrize(("uri", "problem", "fix"), [
    ("test:///default", "uses libvirt's 'test' driver", "qemu:///embed?root=DIR"),
    ("bogus", "is not a libvirt URI", "https://libvirt.org/uri.html"),
    ("qemu://", "the QEMU driver has no path ''", "qemu:///system"),
    ("qemu:///embed", "qemu:///embed needs root=", "e.g. the default qemu:///embed?root="),
    ("qemu:///embed?root=relative/dir", "qemu:///embed needs root=", "qemu:///embed?root=DIR"),
])
def test_libvirt_uri_hotadd_cannot_use_gets_its_own_fix(tmp_path: Path, uri: str, problem: str,
                                                        fix: str) -> None:
    output = refused("--libvirt-uri", uri, cwd_run_dir=tmp_path / "run")
    assert problem in output and fix in output
    assert "start the libvirt daemon" not in output


@pytest.fixture
def short_file() -> Iterator[Path]:
    """A file with a short path (an embedded root's path length is limited)."""
    fd, name = tempfile.mkstemp(dir="/tmp", prefix="hotadd-")
    os.close(fd)
    yield Path(name)
    Path(name).unlink()


def test_embed_root_that_is_a_file(tmp_path: Path, short_file: Path) -> None:
    root = short_file
    output = refused("--libvirt-uri", f"qemu:///embed?root={root}", cwd_run_dir=tmp_path / "run")
    assert f"the embedded libvirt root {root} is not a directory" in output
    assert "fix: give root= a directory" in output


def test_embed_root_under_a_file_to_sweep(short_file: Path) -> None:
    """`hotadd sweep` opens the same root: an unusable one is exit 2 with the fix there too."""
    blocker = short_file
    proc = run_hotadd("sweep", "--libvirt-uri", f"qemu:///embed?root={blocker}/root",
                      timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"the embedded libvirt root {blocker}/root is unusable" in proc.stderr
    assert "fix:" in proc.stderr and "Traceback" not in proc.stderr


def test_run_dir_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "run"
    target.write_text("mine\n")
    proc = run_hotadd("run", "--quiet", "--run-dir", str(target), timeout=60)
    assert proc.returncode == 2
    assert f"--run-dir {target} is a file, not a directory" in proc.stderr
    assert target.read_text() == "mine\n"


def test_run_dir_that_cannot_be_made(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_hotadd("run", "--quiet", "--run-dir", str(blocker / "run"), timeout=60)
    assert proc.returncode == 2
    assert f"--run-dir {blocker / 'run'} is not a writable directory" in proc.stderr
    assert "fix: give a directory you can write" in proc.stderr


def test_run_dir_holding_files_hotadd_did_not_make_is_refused(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("a person's notes\n")
    proc = run_hotadd("run", "--quiet", "--run-dir", str(run_dir), timeout=60)
    assert proc.returncode == 2
    assert "is not empty and no hotadd run made it (notes.txt)" in proc.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == ["notes.txt"]

"""A QEMU frozen with a real SIGSTOP: a libvirt call blocked on it still lets a signal through,
has a deadline that names the freeze, the teardown still removes it, and a `hotadd run` whose
QEMU froze during an add ends with no verdict (exit 2), never PASS, and ends at a signal.

Every test resumes QEMU (SIGCONT) in `finally` if it still exists, and the fixtures assert no
QEMU is left; every wait is bounded (a hang fails the test instead of stalling the suite).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from harness import interrupts, paths
from harness.errors import QemuFrozen
from harness.guests import reference
from harness.host import storage
from harness.host.machine import Machine, run_name
from harness.host.roots import process_stopped
from tests.support.processes import qemu_pids_mentioning
from tests.vm.test_host_hotadd import reference_spec
from tests.vm.test_interrupts import assert_torn_down, finish, result_of, wait_for_line

pytestmark = pytest.mark.vm

BOUND_S = 60  # how long a helper waits for the call under test to be in flight


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """QEMU `pid` stopped with SIGSTOP for the block; resumed afterwards if it still exists.
    The kernel stops the process asynchronously: the block starts once /proc shows it."""
    os.kill(pid, signal.SIGSTOP)
    try:
        stopped = threading.Event()
        for _ in range(int(BOUND_S / 0.01)):
            if process_stopped(pid):
                break
            stopped.wait(0.01)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def signal_when_in_flight(call: str, qemu: int, gave_up: threading.Event) -> threading.Thread:
    """A thread that sends SIGTERM to this process once the libvirt call `call` runs (its
    worker thread, named libvirt-CALL, exists). If it never appears within BOUND_S, it sets
    `gave_up`, sends the signal anyway and resumes QEMU `qemu`, so a call blocked in libvirt
    (where no handler can run) returns and the test fails instead of hanging."""
    def run() -> None:
        waited = threading.Event()
        for _ in range(int(BOUND_S / 0.05)):
            if any(t.name == f"libvirt-{call}" for t in threading.enumerate()):
                os.kill(os.getpid(), signal.SIGTERM)
                return
            waited.wait(0.05)
        gave_up.set()
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(qemu, signal.SIGCONT)

    return threading.Thread(target=run, daemon=True)


@pytest.mark.timeout(300)
def test_a_stopped_qemu_neither_blocks_a_signal_nor_the_teardown(
        conn: libvirt.virConnect, reference_image: reference.ReferenceImage,
        tmp_path: Path) -> None:
    name = run_name("test-frozen")
    scratch = storage.run_scratch(name)
    handlers = {sig: signal.getsignal(sig) for sig in interrupts.SIGNALS}
    pid: int | None = None
    try:
        with Machine.start(conn, reference_spec(reference_image, tmp_path, name),
                           scratch) as machine:
            pid = machine.qemu_pid()
            assert pid is not None and pid in qemu_pids_mentioning(f"guest={name},")
            interrupts.install()
            with frozen(pid):
                assert process_stopped(pid)
                # a QMP query on a stopped QEMU: a deadline, and an error that says why
                with pytest.raises(QemuFrozen, match=f"QEMU process {pid} is stopped"):
                    machine.monitor("query-status", timeout=1)
                with pytest.raises(QemuFrozen, match="stopped"):
                    machine.check_alive()
                # a signal while the call is blocked inside libvirt ends it at once
                gave_up = threading.Event()
                helper = signal_when_in_flight("query-hotpluggable-cpus", pid, gave_up)
                helper.start()
                with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
                    machine.qemu_view()
                helper.join(BOUND_S)
                assert not gave_up.is_set(), "the QMP query never ran on a worker thread"
                assert process_stopped(pid), "the signal came through only after QEMU resumed"
                # the teardown (Machine's exit) runs while QEMU is still stopped
                for sig, handler in handlers.items():
                    signal.signal(sig, handler)
                machine.close()
            assert not qemu_pids_mentioning(f"guest={name},"), "teardown left QEMU running"
            assert not scratch.exists()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def start_run(cli_uri: str, run_dir: Path, ack_timeout: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "harness", "run", "--libvirt-uri", cli_uri, "--run-dir",
         str(run_dir), "--ack-timeout", str(ack_timeout)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def freeze_at_add(proc: subprocess.Popen[str], cli_uri: str, seen: list[str]) -> int:
    """SIGSTOP the run's QEMU (the only one under its own libvirt root) as soon as its
    progress shows add 1; its pid."""
    wait_for_line(proc, "] add 1: ", seen)
    pids = qemu_pids_mentioning(_root(cli_uri))
    assert len(pids) == 1, (pids, "".join(seen))
    os.kill(pids[0], signal.SIGSTOP)
    return pids[0]


def _root(cli_uri: str) -> str:
    return cli_uri.split("root=", 1)[1]


def frozen_run(cli_uri: str, run_dir: Path, ack_timeout: float,
               sig: signal.Signals | None = None) -> tuple[int, str, int]:
    """A `hotadd run` whose QEMU is stopped at add 1 (then `sig` sent to hotadd) and stays
    stopped until the run ended (bounded by `finish`): (QEMU pid, stderr, exit code). QEMU is
    resumed and hotadd killed afterwards whatever happened."""
    proc = start_run(cli_uri, run_dir, ack_timeout)
    seen: list[str] = []
    pid = None
    try:
        pid = freeze_at_add(proc, cli_uri, seen)
        if sig is not None:
            proc.send_signal(sig)
        err = finish(proc, seen)
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "Traceback" not in err
    name = ET.parse(run_dir / "domain.xml").findtext("name")
    assert name and not (paths.scratch_dir() / name).exists(), err  # QEMU: cli_uri checks
    return pid, err, proc.returncode


@pytest.mark.timeout(600)
def test_a_run_whose_qemu_froze_during_an_add_has_no_verdict(cli_uri: str,
                                                              tmp_path: Path) -> None:
    """QEMU stays stopped for far longer than the add's budget (until the run ended): the run
    reports a frozen QEMU, exit 2, never PASS, and leaves nothing behind."""
    run_dir = tmp_path / "run"
    pid, err, code = frozen_run(cli_uri, run_dir, ack_timeout=10)
    assert code == 2, err
    result = result_of(run_dir)
    assert result["outcome"] == "error" and result["exit_code"] == 2, result
    assert f"QEMU process {pid} is stopped" in result["error"], result["error"]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_a_run_whose_qemu_is_frozen(cli_uri: str, tmp_path: Path,
                                                  sig: signal.Signals) -> None:
    """The signal, sent right after QEMU stopped, ends the run while QEMU is still stopped
    (it is resumed only after hotadd exited), with exit 2 and nothing left. Had the run
    itself noticed the freeze first, it reports that instead."""
    run_dir = tmp_path / "run"
    pid, err, code = frozen_run(cli_uri, run_dir, ack_timeout=3600, sig=sig)
    assert code == 2, err
    result = result_of(run_dir)
    assert result["outcome"] in ("interrupted", "error") and result["exit_code"] == 2, result
    if result["outcome"] == "error":
        assert f"QEMU process {pid} is stopped" in result["error"], result["error"]
    else:
        assert result["interrupted"]["signal"] == sig.name
        assert_torn_down(run_dir, err)

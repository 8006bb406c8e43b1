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
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from harness import interrupts
from harness.errors import QemuFrozen
from harness.guests import reference
from harness.host import storage
from harness.host.machine import Machine, run_name
from tests.support.processes import qemu_pids_mentioning
from tests.vm.test_host_hotadd import reference_spec
from tests.vm.test_interrupts import assert_torn_down, finish, result_of, wait_for_line

pytestmark = pytest.mark.vm

BOUND_S = 60  # how long a helper waits for the call under test to be in flight


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2]


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """QEMU `pid` stopped with SIGSTOP for the block; resumed afterwards if it still exists."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def signal_when_in_flight(call: str, gave_up: threading.Event) -> threading.Thread:
    """A thread that sends SIGTERM to this process once the libvirt call `call` runs (its
    worker thread, named libvirt-CALL, exists). If it never appears within BOUND_S, it sets
    `gave_up` and sends the signal anyway."""
    def run() -> None:
        waited = threading.Event()
        for _ in range(int(BOUND_S / 0.05)):
            if any(t.name == f"libvirt-{call}" for t in threading.enumerate()):
                break
            waited.wait(0.05)
        else:
            gave_up.set()
        os.kill(os.getpid(), signal.SIGTERM)

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
                assert _state(pid) == "T"
                # a QMP query on a stopped QEMU: a deadline, and an error that says why
                with pytest.raises(QemuFrozen, match=f"QEMU process {pid} is stopped"):
                    machine.monitor("query-status", timeout=1)
                with pytest.raises(QemuFrozen, match="stopped"):
                    machine.check_alive()
                # a signal while the call is blocked inside libvirt ends it at once
                gave_up = threading.Event()
                helper = signal_when_in_flight("query-hotpluggable-cpus", gave_up)
                helper.start()
                with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
                    machine.qemu_view()
                helper.join(BOUND_S)
                assert not gave_up.is_set(), "the QMP query never ran on a worker thread"
                assert _state(pid) == "T", "the signal came through only after QEMU resumed"
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


def _resume(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.mark.timeout(600)
def test_a_run_whose_qemu_froze_during_an_add_has_no_verdict(cli_uri: str,
                                                              tmp_path: Path) -> None:
    """QEMU stays stopped for far longer than the add's budget (until the run ended): the run
    reports a frozen QEMU, exit 2, never PASS, and leaves nothing behind."""
    run_dir = tmp_path / "run"
    proc = start_run(cli_uri, run_dir, ack_timeout=10)
    seen: list[str] = []
    pid = None
    try:
        pid = freeze_at_add(proc, cli_uri, seen)
        err = finish(proc, seen)
    finally:
        if pid is not None:
            _resume(pid)
        _stop(proc)
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    result = result_of(run_dir)
    assert result["outcome"] == "error" and result["exit_code"] == 2, result
    assert f"QEMU process {pid} is stopped" in result["error"], result["error"]
    assert not qemu_pids_mentioning(_root(cli_uri))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_a_run_whose_qemu_is_frozen(cli_uri: str, tmp_path: Path,
                                                  sig: signal.Signals) -> None:
    """With an add budget far beyond the test's bound, only the signal can end the run: it
    does, while QEMU is still stopped, and the run is torn down."""
    run_dir = tmp_path / "run"
    proc = start_run(cli_uri, run_dir, ack_timeout=3600)
    seen: list[str] = []
    pid = None
    try:
        pid = freeze_at_add(proc, cli_uri, seen)
        proc.send_signal(sig)
        err = finish(proc, seen)
    finally:
        if pid is not None:
            _resume(pid)
        _stop(proc)
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    assert_torn_down(run_dir, err)
    result = result_of(run_dir)
    assert result["outcome"] in ("interrupted", "error") and result["exit_code"] == 2, result
    if result["outcome"] == "error":  # the run saw the freeze before the signal landed
        assert f"QEMU process {pid} is stopped" in result["error"], result["error"]
    else:
        assert result["interrupted"]["signal"] == sig.name

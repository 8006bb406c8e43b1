"""`hotadd run` reaps its own QEMU (harness.host.reaper): QEMU is that process's child while the
run lasts, and no zombie is left for init to reap at its own pace, which libvirt's destroy
would otherwise wait for."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.host.procfs import proc_stat
from tests.support.processes import qemu_pids_mentioning
from tests.vm.test_frozen_qemu import _root, start_run
from tests.vm.test_interrupts import finish, wait_for_line

pytestmark = pytest.mark.vm


@pytest.mark.timeout(600)
def test_a_run_is_the_parent_of_its_qemu_and_leaves_no_zombie(cli_uri: str,
                                                               tmp_path: Path) -> None:
    proc = start_run(cli_uri, tmp_path / "run", ack_timeout=60)
    seen: list[str] = []
    try:
        wait_for_line(proc, "] add 1: ", seen)
        pids = qemu_pids_mentioning(_root(cli_uri))
        assert len(pids) == 1, (pids, "".join(seen))
        stat = proc_stat(pids[0])
        assert stat is not None and stat.parent == proc.pid, "QEMU was not adopted"
        err = finish(proc, seen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert not Path(f"/proc/{pids[0]}").exists(), "QEMU still runs, or is a zombie"

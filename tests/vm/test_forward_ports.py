"""The guest transport's forward on the reference guest under real libvirt and QEMU: QEMU binds
the host port itself (`Forward`, port 0), so a port another process takes meanwhile cannot
break the start, and the port the harness reports is the one QEMU listens on."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import libvirt
import pytest

from harness.guests.base import HardwareRequest
from harness.guests.reference_kind import ReferenceKind
from harness.host import storage
from harness.host.domain import Accelerator, Topology, VcpuPlan
from harness.host.machine import Machine, run_name
from harness.progress import Progress

pytestmark = pytest.mark.vm


def test_a_port_taken_after_the_spec_is_built_cannot_break_the_start(
        conn: libvirt.virConnect, tmp_path: Path) -> None:
    """The race the old bind-then-close choice lost: another process takes the spec's port
    before QEMU binds it. Here it takes every port the spec names; the guest still starts and
    its SSH answers on the port QEMU reports."""
    name = run_name("test-ports")
    scratch = storage.run_scratch(name)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    kind = ReferenceKind()
    kind.prepare(Progress(quiet=True))
    hw = HardwareRequest(name=name, vcpus=VcpuPlan(Topology(cores=2), 1),
                         accelerator=Accelerator.TCG, run_dir=run_dir, scratch=scratch)
    spec = kind.domain_spec(hw)
    with contextlib.ExitStack() as taken:
        for fwd in spec.forwards:
            if fwd.host_port:  # a port chosen before the start: someone else binds it first
                thief = taken.enter_context(socket.socket())
                thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                thief.bind(("127.0.0.1", fwd.host_port))
                thief.listen(1)
        with Machine.start(conn, spec, scratch) as machine:
            port = machine.forwarded_port(22)
            assert port != 0
            session = kind.open_session(machine, Progress(quiet=True), 300)
            try:
                assert session.processor_count() == 1
            finally:
                session.close()
            with socket.create_connection(("127.0.0.1", port), timeout=30) as direct:
                assert direct.recv(4) == b"SSH-", "QEMU's forward reaches the guest's sshd"

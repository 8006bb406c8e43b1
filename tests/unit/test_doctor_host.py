"""`hotadd doctor --host URI` on hosts it cannot use: each problem named with its fix, the
checks that need it not run, exit 2. (A reachable host: tests/vm/test_remote_lab.py.)"""

from __future__ import annotations

import socket

from tests.support.processes import run_hotadd


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port  # closed again: nothing listens there


def test_a_host_that_does_not_answer_ssh_is_named_with_the_fix() -> None:
    port = _closed_port()
    proc = run_hotadd("doctor", "--host", f"qemu+ssh://root@127.0.0.1:{port}/system")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("ok  libvirt URI")
    assert lines[1].startswith("NO  SSH login") and "cannot connect over SSH" in lines[1]
    assert f"ssh -p {port} root@127.0.0.1" in lines[2]
    assert not any("libvirt " in x and x.startswith(("ok", "NO")) for x in lines[3:])
    assert "./setup.sh" not in proc.stdout  # setup.sh installs this machine, not that host


def test_a_uri_a_remote_run_cannot_use_is_refused_with_the_form_to_use() -> None:
    proc = run_hotadd("doctor", "--host", "qemu+tcp://kvm7/system")
    assert proc.returncode == 2
    assert proc.stdout.startswith("NO  libvirt URI") and "qemu+ssh://USER@HOST" in proc.stdout
    both = run_hotadd("doctor", "--host", "qemu+ssh://a/system", "--libvirt-uri",
                      "qemu+ssh://b/system")
    assert both.returncode == 2 and "two different libvirts" in both.stderr

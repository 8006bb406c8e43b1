"""SshTransport against the reference guest's real dropbear, over QEMU's 127.0.0.1 forward.

The guest is booted with plain QEMU here (this tests the transport, not the hot-add path);
one guest for the module, torn down at the end.
"""

from __future__ import annotations

import hashlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harness.errors import GuestNotReady, TransportError
from harness.guests import reference
from harness.guests.reference import ReferenceImage
from harness.transport.ssh import SshTransport
from tests.support.processes import stop

pytestmark = pytest.mark.vm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port



@pytest.fixture(scope="module")
def guest_port(reference_image: ReferenceImage,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """Boot the reference guest under plain QEMU (TCG) and yield its forwarded SSH port."""
    serial = tmp_path_factory.mktemp("ssh-guest") / "serial.log"
    port = _free_port()
    qemu = subprocess.Popen([
        "qemu-system-x86_64", "-accel", "tcg", "-machine", "q35", "-m", "512",
        "-smp", "2,maxcpus=4", "-kernel", str(reference_image.kernel),
        "-initrd", str(reference_image.initrd),
        "-append", reference_image.cmdline, "-display", "none", "-serial", f"file:{serial}",
        "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-pci,netdev=n0",
    ], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while reference.READY_MARKER not in (serial.read_text(errors="replace")
                                             if serial.exists() else ""):
            if qemu.poll() is not None:
                err = qemu.stderr.read().decode(errors="replace") if qemu.stderr else ""
                pytest.fail(f"QEMU exited: {err}")
            assert time.monotonic() < deadline, f"guest not ready; serial log {serial}"
            time.sleep(0.1)
        yield port
    finally:
        stop(qemu)


@pytest.fixture()
def ssh(reference_image: ReferenceImage, guest_port: int) -> Iterator[SshTransport]:
    with reference.connect(reference_image, guest_port) as t:
        assert isinstance(t, SshTransport)
        yield t


def _other_key_line() -> str:
    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH,
                            serialization.PublicFormat.OpenSSH).decode()


def test_run_separates_stdout_stderr_and_exit_status(ssh: SshTransport) -> None:
    result = ssh.run("echo out; echo err >&2; exit 7")
    assert (result.rc, result.stdout, result.stderr) == (7, "out\n", "err\n")
    assert not result.ok
    with pytest.raises(TransportError, match="rc=7"):
        result.check()


def test_no_pty(ssh: SshTransport) -> None:
    result = ssh.run("tty")
    assert result.rc != 0
    assert "not a tty" in result.stdout


def test_connection_is_reused(ssh: SshTransport) -> None:
    # Each SSH connection is one dropbear child: the same one serves every command.
    first = ssh.run("echo $PPID").stdout
    second = ssh.run("echo $PPID").stdout
    ssh.probe()
    assert first == second == ssh.run("echo $PPID").stdout


def test_reconnects_once_after_the_connection_died(ssh: SshTransport) -> None:
    before = ssh.run("echo $PPID").stdout.strip()
    with pytest.raises(TransportError):
        ssh.run("kill -9 $PPID; sleep 5", timeout=20)  # kills this connection's server side
    result = ssh.run("echo $PPID")
    assert result.ok
    assert result.stdout.strip() != before


def test_run_script_sends_the_script_as_a_file(ssh: SshTransport) -> None:
    # The marker is only in a comment: if the script travelled on a command line it would show
    # up in some process's cmdline, which the script prints.
    padding = "".join(f"# filler line {i} {'x' * 100}\n" for i in range(3000))  # > 300 KiB
    script = (
        "# MARKER-7f3a9c\n" + padding +
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done\n"
        "echo \"stdin: $(cat)\"\n"
        "exit 5\n"
    )
    result = ssh.run_script(script)
    assert result.rc == 5
    assert "MARKER-7f3a9c" not in result.stdout
    assert "stdin: \n" in result.stdout  # the script's stdin is closed, not the script itself
    assert "MARKER" not in result.command
    assert ssh.run("ls /tmp | grep -c hotadd-script || true").stdout.strip() == "0"


def test_fetch_is_binary_exact(ssh: SshTransport, tmp_path: Path) -> None:
    digest = ssh.run("head -c 300000 /dev/urandom > /tmp/blob && sha256sum /tmp/blob").check()
    local = tmp_path / "blob"
    ssh.fetch("/tmp/blob", local)
    assert hashlib.sha256(local.read_bytes()).hexdigest() == digest.stdout.split()[0]
    assert ssh.read_text("/etc/shells") == "/bin/sh\n"
    with pytest.raises(TransportError, match="cannot read /nonexistent"):
        ssh.fetch("/nonexistent", local)


def test_put_is_binary_exact_and_replaces_the_target_whole(ssh: SshTransport,
                                                           tmp_path: Path) -> None:
    data = hashlib.sha256(b"seed").digest() * 9000 + bytes(range(256))
    local = tmp_path / "mod.ko"
    local.write_bytes(data)
    ssh.run("mkdir -p '/tmp/put dir' && head -c 999999 /dev/zero > '/tmp/put dir/m.ko'").check()
    ssh.put(local, "/tmp/put dir/m.ko")
    digest = ssh.run("sha256sum '/tmp/put dir/m.ko'").check().stdout.split()[0]
    assert digest == hashlib.sha256(data).hexdigest()
    assert ssh.run("ls -A '/tmp/put dir'").stdout.split() == ["m.ko"], "no temporary left"
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    ssh.put(empty, "/tmp/new/dir/empty")
    assert ssh.run("wc -c < /tmp/new/dir/empty").stdout.strip() == "0"
    with pytest.raises(TransportError, match="cannot copy"):
        ssh.put(local, "/proc/version")


def test_argv_reaches_the_program_intact(ssh: SshTransport) -> None:
    argv = ["printf", "[%s]", "a b", "$(reboot)", "'q'", '"dq"', "x;y", "*", ""]
    assert ssh.run_argv(argv).check().stdout == "[a b][$(reboot)]['q'][\"dq\"][x;y][*][]"
    assert ssh.run_argv(["false"]).rc == 1


def test_timeout_raises_and_transport_stays_usable(ssh: SshTransport) -> None:
    # the command would outlive the test's own budget: only the transport's timeout ends it
    with pytest.raises(TransportError, match="timed out"):
        ssh.run("sleep 100000", timeout=1)
    assert ssh.run("echo still here").stdout == "still here\n"


def test_wrong_host_key_is_refused(reference_image: ReferenceImage, guest_port: int) -> None:
    with SshTransport("127.0.0.1", guest_port, username="root",
                      private_key=reference_image.private_key,
                      host_key_line=_other_key_line()) as t, \
            pytest.raises(TransportError, match="host key is not the guest's"):
        t.probe()


def test_wrong_client_key_is_refused(reference_image: ReferenceImage, guest_port: int,
                                     tmp_path: Path) -> None:
    key = tmp_path / "other_key"
    key.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()))
    with SshTransport("127.0.0.1", guest_port, username="root", private_key=key,
                      host_key_line=reference_image.host_key_line) as t, \
            pytest.raises(TransportError, match="authentication refused"):
        t.probe()


def test_unreachable_port_fails_fast(reference_image: ReferenceImage) -> None:
    t = SshTransport("127.0.0.1", _free_port(), username="root",
                     private_key=reference_image.private_key,
                     host_key_line=reference_image.host_key_line,
                     connect_timeout=2)
    with pytest.raises(TransportError, match="cannot connect"):
        t.probe()
    with pytest.raises(GuestNotReady, match="not reachable after 1s"):
        t.wait_ready(1, hint="read the serial log")
    t.close()
    t.close()

"""A second libvirt host on this machine, reached only through SSH.

`lab_host()` starts, in mount and network namespaces of its own (`unshare --mount --net`): an
OpenSSH `sshd` with a throwaway host key and one authorised key made for the test, and (with
`libvirtd=True`) a system `virtlogd` + `libvirtd` (as tests/vm/test_system_libvirt.py starts
them). Inside the namespace `/run/libvirt` is a private tmpfs (its libvirtd is nobody else's),
the host's hotadd cache is a tmpfs of its own (so only what hotadd stages over SFTP is there),
and the directories in `hide` (this machine's hotadd cache) are empty tmpfs: the host cannot
read the local guest files, so a run that forgot to stage fails. Outside, the host's cache is an
empty directory: hotadd cannot cheat the other way either. What the host has is read through
/proc/PID/root (its mount namespace).

The host's network is only its own loopback: the forwards its QEMU binds to its 127.0.0.1 are
not this machine's, so a transport that dialled 127.0.0.1 directly instead of tunnelling over
the host's SSH finds nothing there (as on a real lab host). The one way in is SSH: a listener
on this machine's 127.0.0.1:PORT hands each connection to an `sshd -i` (inetd mode, sshd(8))
started inside the namespaces; `in_network()` lets a test put its own servers on the host's
loopback.

Its libvirt URI is `qemu+ssh://root@127.0.0.1:PORT/system?keyfile=K&known_hosts=F&command=W`
(https://libvirt.org/uri.html): libvirt's ssh transport runs `W`, which is `ssh` told to
check the host key against the test's own known_hosts file (the ssh transport has no such
option of its own, and `no_verify=1` would write the throwaway key into root's
~/.ssh/known_hosts); hotadd's paramiko reads `known_hosts=`.

Every process started here is stopped by its pid when the context ends; nothing else is
touched. Needs root, `unshare`, `nsenter`, `ip`, OpenSSH's server (setup.sh installs
openssh-server).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.support.processes import qemu_pids_mentioning, stop

SSHD = Path("/usr/sbin/sshd")
CLONE_NEWNET = 0x40000000  # <linux/sched.h>


@dataclass(frozen=True)
class LabHost:
    port: int
    home: Path  # the fixture's own files (keys, config, logs); visible from both sides
    cache: Path  # HOTADD_REMOTE_CACHE_DIR on the host: a tmpfs only the host sees
    key: Path
    known_hosts: Path
    ssh_command: Path
    anchor_pid: int  # the process holding the namespace

    @property
    def uri(self) -> str:
        return (f"qemu+ssh://root@127.0.0.1:{self.port}/system?keyfile={quote(str(self.key))}"
                f"&known_hosts={quote(str(self.known_hosts))}"
                f"&command={quote(str(self.ssh_command))}")

    @property
    def env(self) -> dict[str, str]:
        return {"HOTADD_REMOTE_CACHE_DIR": str(self.cache)}

    def inside(self, path: Path) -> Path:
        """`path` as the host sees it (its mount namespace), readable from here."""
        return Path(f"/proc/{self.anchor_pid}/root") / path.relative_to("/")

    @contextlib.contextmanager
    def in_network(self) -> Iterator[None]:
        """The calling thread in the host's network namespace: a socket bound meanwhile is on
        the host's 127.0.0.1 and stays there (setns(2) moves only this thread)."""
        with _netns(Path(f"/proc/{self.anchor_pid}/ns/net")):
            yield


@contextlib.contextmanager
def _netns(target: Path) -> Iterator[None]:
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    other = os.open(target, os.O_RDONLY)
    try:
        if libc.setns(other, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {target}")
        try:
            yield
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back into this thread's network")
    finally:
        os.close(own)
        os.close(other)


class _InetdListener:
    """This machine's 127.0.0.1:port; each connection becomes the stdin/stdout of `argv`
    (as inetd serves `sshd -i`). The port is held from the bind on: nothing can take it."""

    def __init__(self, argv: Sequence[str], log: Path) -> None:
        self._argv, self._log = list(argv), log
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(8)
        self.port: int = self._server.getsockname()[1]
        self.children: list[subprocess.Popen[bytes]] = []
        self._thread = threading.Thread(target=self._serve, name="lab-sshd", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:  # closed
                return
            with conn, open(self._log, "ab") as log:
                self.children.append(subprocess.Popen(self._argv, stdin=conn, stdout=conn,
                                                      stderr=log))
            self.children = [c for c in self.children if c.poll() is None]

    def close(self) -> None:
        self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        self._thread.join(10)
        for child in self.children:
            stop(child)


def _wait(what: str, ready: Callable[[], bool], procs: Sequence[subprocess.Popen[bytes]],
          log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        dead = [p.args for p in procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            text = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise AssertionError(f"{what} did not come up (exited: {dead}):\n{text}")
        time.sleep(0.1)


@contextlib.contextmanager
def lab_host(hide: Sequence[Path] = (), libvirtd: bool = True) -> Iterator[LabHost]:
    if os.geteuid() != 0:
        pytest.skip("a lab host needs root (mount and network namespaces, sshd, system libvirtd)")
    for tool in ("unshare", "nsenter", "ip", "ssh-keygen"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is missing")
    if not SSHD.exists():
        pytest.skip("OpenSSH's server is missing: apt-get install openssh-server (setup.sh)")
    home = Path(tempfile.mkdtemp(prefix="hotadd-lab-", dir="/var/tmp"))
    home.chmod(0o755)
    cache = home / "cache"
    cache.mkdir(mode=0o755)
    key, host_key = home / "client_key", home / "host_key"
    for k in (key, host_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hotadd-lab",
                        "-f", str(k)], check=True)
    (home / "authorized_keys").write_text((home / "client_key.pub").read_text())
    known = home / "known_hosts"
    ssh_command = home / "ssh"
    ssh_command.write_text("#!/bin/sh\n# ssh checking the lab host's key against its own file\n"
                           f"exec ssh -o UserKnownHostsFile={known} "
                           "-o StrictHostKeyChecking=yes -o BatchMode=yes \"$@\"\n")
    ssh_command.chmod(0o755)
    config = home / "sshd_config"
    config.write_text("\n".join([
        f"HostKey {host_key}",
        f"AuthorizedKeysFile {home}/authorized_keys", "PermitRootLogin prohibit-password",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
        "StrictModes no", "Subsystem sftp internal-sftp",
        "AllowTcpForwarding local", "LogLevel DEBUG1", ""]))
    mounts = ["mount -t tmpfs -o mode=755 hotadd-lab /run/libvirt",
              f"mount -t tmpfs -o mode=755 hotadd-lab-cache {cache}"]
    mounts += [f"mount -t tmpfs -o mode=700 hotadd-lab-hidden {p}" for p in hide if p.is_dir()]
    log = home / "lab.log"
    procs: list[subprocess.Popen[bytes]] = []
    # sshd's privilege separation directory (compiled in). Left in place afterwards: another
    # lab host (a concurrent test session) may run an sshd that needs it, and each connection
    # to an sshd without it is reset ("Missing privilege separation directory").
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    sshd: _InetdListener | None = None
    with open(log, "ab") as out:
        anchor = subprocess.Popen(
            ["unshare", "--mount", "--net", "--propagation", "private", "sh", "-ec",
             " && ".join(["ip link set lo up", "mkdir -p /run/libvirt", *mounts,
                          "touch " + str(home / "ns-ready"), "exec sleep infinity"])],
            stdout=out, stderr=out)
        procs.append(anchor)
        enter = ["nsenter", "--target", str(anchor.pid), "--mount", "--net", "--"]

        def inside(*argv: str) -> None:
            procs.append(subprocess.Popen([*enter, *argv], stdout=out, stderr=out))

        try:
            _wait("the lab host's namespace", (home / "ns-ready").exists, procs, log)
            subprocess.run([*enter, str(SSHD), "-t", "-f", str(config)], check=True,
                           stdout=out, stderr=out)  # a bad config fails here, not per login
            sshd = _InetdListener([*enter, str(SSHD), "-i", "-e", "-f", str(config)], log)
            known.write_text(f"[127.0.0.1]:{sshd.port} " + " ".join(
                (home / "host_key.pub").read_text().split()[:2]) + "\n")
            host = LabHost(sshd.port, home, cache, key, known, ssh_command, anchor.pid)
            if libvirtd:
                inside("virtlogd", "-p", str(home / "virtlogd.pid"))
                inside("libvirtd", "-p", str(home / "libvirtd.pid"))
                sock = host.inside(Path("/run/libvirt/libvirt-sock"))
                _wait("the lab host's libvirtd", sock.exists, procs, log)
            yield host
        finally:
            if libvirtd and sshd is not None:  # a test that failed half-way: its domains
                _destroy_domains(LabHost(sshd.port, home, cache, key, known, ssh_command,
                                         anchor.pid))
            if sshd is not None:
                sshd.close()
            for proc in reversed(procs):
                stop(proc)
            leftover = qemu_pids_mentioning(str(home))
            for pid in leftover:  # started by this fixture's libvirtd, so ours to end
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            shutil.rmtree(home, ignore_errors=True)
            assert not leftover, f"QEMU {leftover} of the lab host outlived its runs (killed)"


@contextlib.contextmanager
def reference_lab_host() -> Iterator[LabHost]:
    """A lab host for reference-guest runs: the guest is built here, and this machine's hotadd
    cache is hidden from the host, so a run must stage what it needs."""
    from harness import paths
    from harness.guests import reference

    reference.build()
    with lab_host(hide=[paths.cache_root()]) as host:
        yield host


def _destroy_domains(host: LabHost) -> None:
    names = subprocess.run(["virsh", "-c", host.uri, "list", "--name"], capture_output=True,
                           text=True, timeout=120, check=False).stdout.split()
    for name in names:
        subprocess.run(["virsh", "-c", host.uri, "destroy", name], capture_output=True,
                       timeout=120, check=False)


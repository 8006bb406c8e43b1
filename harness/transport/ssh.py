"""SSH transport (paramiko): how the harness reaches Linux guests such as the reference guest.

One SSH connection per transport, opened on first use, reused for every command and re-opened
once if it died (a command is retried only when it could not even be started, so nothing runs
twice). No pty, so the exit status and stderr are the command's own. Authentication is by key
only; the server's host key must be the one the caller expects (the guest build generated it),
so a wrong port or a stale guest is refused instead of trusted. Files move with `cat` over an
exec channel: dropbear, the reference guest's server, has no SFTP subsystem.
"""

from __future__ import annotations

import binascii
import contextlib
import logging
import select
import shlex
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import paramiko

from harness.errors import InputError, TransportError
from harness.host.target import Dialer
from harness.transport.base import CommandResult, Transport

# paramiko's transport thread logs its failures (a banner that never came from a frozen
# guest...) with tracebacks; with no handler configured, Python's last-resort handler prints
# them on stderr. hotadd reports each as a TransportError with its fix instead.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

_CHUNK = 65536
_SHOWN_COMMAND_MAX = 300

# One round trip: upload the script on stdin into a temporary file, run it with stdin closed,
# remove it, keep its exit status. 125 = the upload itself failed.
_RUN_SCRIPT = (
    'f=$(mktemp /tmp/hotadd-script.XXXXXX) || exit 125; '
    'cat > "$f" || { rm -f "$f"; exit 125; }; '
    'sh "$f" </dev/null; rc=$?; rm -f "$f"; exit $rc'
)


def _shown(command: str) -> str:
    """The command as it may appear in results and errors (shortened; carries no secrets)."""
    return command if len(command) <= _SHOWN_COMMAND_MAX else command[:_SHOWN_COMMAND_MAX] + "..."


def parse_host_key(line: str) -> paramiko.PKey:
    """The public key in an OpenSSH line "TYPE BASE64 [comment]" (the guest's pinned key)."""
    fix = ("give the guest's host key as one OpenSSH line, e.g. the contents of its "
           "ssh_host_ed25519_key.pub (rebuild the reference guest: hotadd guest build --force)")
    parts = line.split()
    if len(parts) < 2:
        raise InputError(f"not an OpenSSH public key line: {line[:80]!r}", fix)
    try:
        entry = paramiko.hostkeys.HostKeyEntry.from_line(f"guest {parts[0]} {parts[1]}")
    except (paramiko.hostkeys.InvalidHostKey, paramiko.SSHException, ValueError,
            binascii.Error) as exc:
        raise InputError(f"the host key {parts[0]} {parts[1][:16]}... does not decode: {exc}",
                         fix) from None
    if entry is None:
        raise InputError(f"unsupported host key type {parts[0]!r}", fix)
    return entry.key


class _ExpectHostKey(paramiko.MissingHostKeyPolicy):
    """Accept exactly one host key, compared by its bytes (not by paramiko object equality,
    which fails across two imports of paramiko's key classes, as pytester's in-process runs
    produce); anything else is refused."""

    def __init__(self, expected: paramiko.PKey) -> None:
        self.expected = expected

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        if (key.get_name(), key.asbytes()) != (self.expected.get_name(),
                                               self.expected.asbytes()):
            raise paramiko.BadHostKeyException(hostname, key, self.expected)


class SshTransport(Transport):
    """Commands and file reads over one paramiko SSH connection, key authentication only."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str,
        private_key: Path,
        host_key_line: str,
        connect_timeout: float = 10.0,
        dial: Dialer | None = None,
        via: str = "",
    ) -> None:
        """`dial` reaches `port` on the libvirt host's 127.0.0.1 when that is another machine
        (a channel over the host's SSH, `harness.host.target`); None connects directly.
        `via` names that host in messages."""
        self.host = host
        self.port = port
        self.username = username
        self.private_key = private_key
        self.host_key = parse_host_key(host_key_line)
        self.connect_timeout = connect_timeout
        self.dial = dial
        self.description = f"ssh {username}@{host}:{port}" + (f" via {via}" if via else "")
        self._client: paramiko.SSHClient | None = None
        self._connecting: paramiko.SSHClient | None = None
        self._aborted = threading.Event()
        self._clients_lock = threading.Lock()

    def __enter__(self) -> SshTransport:
        return self

    # -- connection ---------------------------------------------------------------------------

    def abort(self) -> None:
        """From any thread: fail the command in progress and every later one at once (the
        guest is known to be sick; see Machine.on_sick)."""
        self._aborted.set()
        with self._clients_lock:
            clients = [c for c in (self._client, self._connecting) if c is not None]
        for client in clients:
            client.close()

    def _check_aborted(self) -> None:
        if self._aborted.is_set():
            raise TransportError(f"{self.description}: aborted: the guest is sick",
                                 "read the serial log; the run's error names the cause")

    def _connect(self) -> paramiko.SSHClient:
        self._check_aborted()
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(_ExpectHostKey(self.host_key))
        with self._clients_lock:
            self._connecting = client
        try:
            return self._connect_client(client)
        finally:
            with self._clients_lock:
                self._connecting = None

    def _connect_client(self, client: paramiko.SSHClient) -> paramiko.SSHClient:
        try:
            pkey = paramiko.PKey.from_path(self.private_key)
        except (OSError, paramiko.SSHException) as exc:
            raise TransportError(
                f"{self.description}: cannot read the private key {self.private_key}: {exc}",
                "rebuild the guest (hotadd guest build --force) to regenerate its keys",
            ) from exc
        try:
            sock = self.dial(self.port, self.connect_timeout) if self.dial else None
            client.connect(
                self.host,
                port=self.port,
                sock=sock,
                username=self.username,
                pkey=pkey,
                look_for_keys=False,
                allow_agent=False,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
                channel_timeout=self.connect_timeout,
            )
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise TransportError(
                f"{self.description}: the server's host key is not the guest's "
                f"(got {exc.key.get_name()} {exc.key.fingerprint})",
                "check that the port forwards to the guest that was built with this key",
            ) from exc
        except paramiko.AuthenticationException as exc:
            client.close()
            raise TransportError(
                f"{self.description}: key authentication refused: {exc}",
                "rebuild the guest (hotadd guest build --force) so its authorized key matches",
            ) from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            client.close()
            raise TransportError(
                f"{self.description}: cannot connect: {exc or type(exc).__name__}",
                "check that the guest is up and its SSH server listens",
            ) from exc
        return client

    def _session(self, timeout: float) -> paramiko.Channel:
        """A new exec channel on the live connection, reconnecting once if the old one died."""
        for attempt in (1, 2):
            self._check_aborted()
            if self._client is None:
                self._client = self._connect()
            transport = self._client.get_transport()
            try:
                if transport is None or not transport.is_active():
                    raise paramiko.SSHException("connection no longer active")
                return transport.open_session(timeout=min(timeout, self.connect_timeout))
            except (paramiko.SSHException, OSError, EOFError) as exc:
                self.close()
                if attempt == 2:
                    raise TransportError(
                        f"{self.description}: cannot open a session: {exc}",
                        "check that the guest is still up (read its serial log)",
                    ) from exc
        raise AssertionError("unreachable")

    # -- commands -----------------------------------------------------------------------------

    def _exec(
        self, command: str, timeout: float, stdin: bytes | None = None
    ) -> tuple[int, bytes, bytes, float]:
        """Run `command`; return (rc, stdout, stderr, elapsed). Raises TransportError."""
        t0 = time.monotonic()
        chan = self._session(timeout)
        out: list[bytes] = []
        err: list[bytes] = []
        try:
            chan.exec_command(command)
            if stdin:
                # The command may end without reading all of its stdin (a `put` whose target
                # cannot be written): its exit status, read below, says so. A connection that
                # died is found below too (no exit status, transport inactive).
                with contextlib.suppress(OSError):
                    chan.sendall(stdin)
            chan.shutdown_write()
            deadline = t0 + timeout
            while True:
                while chan.recv_ready():
                    out.append(chan.recv(_CHUNK))
                while chan.recv_stderr_ready():
                    err.append(chan.recv_stderr(_CHUNK))
                done = chan.closed or (chan.exit_status_ready() and chan.eof_received)
                if done and not (chan.recv_ready() or chan.recv_stderr_ready()):
                    break
                if self.liveness is not None:
                    self.liveness()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TransportError(
                        f"{self.description}: command timed out after {timeout:.0f}s: "
                        f"{_shown(command)}",
                        "the guest may be hung: read its serial log",
                    )
                select.select([chan], [], [], min(remaining, 1.0))
            rc = chan.exit_status  # -1: the command died of a signal (no exit status)
            transport = chan.get_transport()
            if rc == -1 and (transport is None or not transport.is_active()):
                raise EOFError("the connection closed before the command's exit status")
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.close()
            raise TransportError(
                f"{self.description}: connection lost during: {_shown(command)}: {exc}",
                "check that the guest is still up (read its serial log)",
            ) from exc
        finally:
            chan.close()
        return rc, b"".join(out), b"".join(err), time.monotonic() - t0

    def run(self, command: str, timeout: float = 120.0) -> CommandResult:
        rc, out, err, elapsed = self._exec(command, timeout)
        return CommandResult(
            command=_shown(command),
            rc=rc,
            stdout=out.decode("utf-8", errors="replace"),
            stderr=err.decode("utf-8", errors="replace"),
            elapsed=elapsed,
        )

    def argv_line(self, argv: Sequence[str]) -> str:
        """POSIX sh quoting (every argument single-quoted where it needs it). A NUL byte cannot
        be in any argument of execve(2)."""
        bad = [a for a in argv if "\0" in a]
        if bad:
            raise InputError(f"argument {bad[0][:40]!r} holds a NUL byte, which no program "
                             "argument can hold", "remove the NUL byte")
        return shlex.join(argv)

    def put(self, local_path: Path, remote_path: str, timeout: float = 120.0) -> None:
        """`cat` into a temporary file beside the target, then `mv` over it (rename is atomic
        within a directory): no SFTP needed, and no partial file under the target's name."""
        try:
            data = local_path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read {local_path}: {exc.strerror or exc}",
                             "give a readable file") from None
        target = shlex.quote(remote_path)
        command = (f'd=$(dirname -- {target}) && mkdir -p -- "$d" && '
                   f'f=$(mktemp "$d/.hotadd-put.XXXXXX") || exit 125; '
                   f'cat > "$f" && mv -f -- "$f" {target} || {{ rm -f -- "$f"; exit 125; }}')
        rc, _, err, _ = self._exec(command, timeout, stdin=data)
        if rc != 0:
            raise TransportError(
                f"{self.description}: cannot copy {local_path.name} to {remote_path} "
                f"(rc={rc}): {err.decode('utf-8', errors='replace').strip()[-500:]}",
                "check that the guest's file system has room and the directory is writable")

    def run_script(self, script: str, timeout: float = 300.0) -> CommandResult:
        rc, out, err, elapsed = self._exec(_RUN_SCRIPT, timeout, stdin=script.encode("utf-8"))
        return CommandResult(
            command=f"<script, {len(script.splitlines())} lines>",
            rc=rc,
            stdout=out.decode("utf-8", errors="replace"),
            stderr=err.decode("utf-8", errors="replace"),
            elapsed=elapsed,
        )

    def round_trips(self, command: str, count: int,
                    timeout: float = 30.0) -> list[tuple[float, str, float]]:
        """`count` exchanges with one running `command` that answers every input line with one
        output line: (time sent, reply, time received), Unix times. One channel for all, so a
        round trip costs the channel's latency, not a command start."""
        chan = self._session(timeout)
        chan.settimeout(timeout)
        out: list[tuple[float, str, float]] = []
        buf = b""
        try:
            chan.exec_command(command)
            for _ in range(count):
                sent = time.time()
                chan.sendall(b"\n")
                while b"\n" not in buf:
                    data = chan.recv(_CHUNK)
                    if not data:
                        raise EOFError(f"{_shown(command)} ended after {len(out)} replies")
                    buf += data
                received = time.time()
                line, _, buf = buf.partition(b"\n")
                out.append((sent, line.decode(errors="replace").strip(), received))
            chan.shutdown_write()  # the guest's loop reads EOF and ends: wait for that
            while not chan.exit_status_ready():
                if not chan.recv(_CHUNK):
                    break
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.close()
            raise TransportError(f"{self.description}: round trips failed: {exc}",
                                 "check that the guest is still up (read its serial log)"
                                 ) from exc
        finally:
            chan.close()
        return out

    def read_bytes(self, remote_path: str, timeout: float = 120.0) -> bytes:
        """The content of a guest file."""
        command = "cat -- " + shlex.quote(remote_path)
        rc, out, err, _ = self._exec(command, timeout)
        if rc != 0:
            raise TransportError(
                f"{self.description}: cannot read {remote_path}: "
                f"{err.decode('utf-8', errors='replace').strip()}",
                "check that the file exists in the guest",
            )
        return out

    def read_text(self, remote_path: str) -> str:
        return self.read_bytes(remote_path).decode("utf-8", errors="replace")

    def fetch(self, remote_path: str, local_path: Path) -> None:
        local_path.write_bytes(self.read_bytes(remote_path))

    def probe(self) -> None:
        result = self.run("true", timeout=self.connect_timeout)
        if not result.ok:
            raise TransportError(
                f"{self.description}: 'true' exited {result.rc}: {result.stderr.strip()}",
                "check the guest's shell",
            )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


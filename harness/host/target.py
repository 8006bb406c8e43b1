"""The machine QEMU runs on, as one interface: this machine, or a libvirt host over SSH.

Everything hotadd does to the host's files and processes outside libvirt goes through a
`HostTarget`: run an argv, put/get a file, make/list/remove directories, hash a file, find a
free TCP port on its 127.0.0.1, and dial that 127.0.0.1 (the transports reach a guest's
forward that way). `LocalHost` is what hotadd always did; `SshHost` does the same over one
paramiko connection to the host of a `qemu+ssh://` URI, the same user, port and key libvirt's
own SSH transport uses (https://libvirt.org/uri.html#ssh-transport).

Ideas taken from pytest-testinfra's backends (one backend chosen from the host's URL, commands
as argv quoted once, the connection opened lazily and reused) and from microsoft/lisa's libvirt
platform (a remote host node that files are copied to before the domain is defined).
Nothing secret crosses this interface: argv are logged in errors, and files put on a host are
guest images, kernels and drivers, never passwords.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import fcntl
import getpass
import hashlib
import os
import select
import shlex
import shutil
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast
from urllib.parse import parse_qs, urlsplit

import paramiko

from harness import paths
from harness.errors import HostUnreachable, InfrastructureError, InputError

#: Where a remote host keeps hotadd's files (staged guest files, scratch dirs): QEMU under a
#: system libvirtd runs as an unprivileged user, so it must be a directory others can search.
REMOTE_CACHE_ENV = "HOTADD_REMOTE_CACHE_DIR"
REMOTE_CACHE_DEFAULT = "/var/lib/hotadd"
_CHUNK = 1 << 20
#: A copy of a save image's stream on a remote host (GiBs for a Windows guest, on its disk).
SAVE_COPY_TIMEOUT_S = 600.0
#: What a lock command prints once flock(1) granted the lock (`SshHost.flock`).
_LOCKED = "hotadd-locked"
#: What a lock command asked not to wait prints when another holds the lock.
_BUSY = "hotadd-busy"
#: `SshHost.lock`: $1 the lock file, then flock(1)'s mode options. The descriptor is flocked,
#: then compared with the file at the path (test's -ef: same device and inode); a lock on a
#: file unlinked meanwhile is dropped and taken again. `cat` inherits the descriptor and holds
#: the lock until its stdin (the SSH channel) ends.
_LOCK_SCRIPT = f"""path=$1; shift
while :; do
  exec 9<>"$path" || exit 2
  flock "$@" 9 || {{ echo {_BUSY}; exit 0; }}
  [ "$path" -ef /proc/self/fd/9 ] && break
  exec 9>&-
done
echo {_LOCKED}
exec cat"""


@dataclass(frozen=True)
class RunResult:
    argv: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str


#: A connected stream to a TCP port on the host's 127.0.0.1 (a socket, or an SSH channel).
Dialer = Callable[[int, float], Any]


class HostTarget(abc.ABC):
    """The host's files and commands. Paths name files on that host."""

    remote: bool
    description: str

    @abc.abstractmethod
    def cache_root(self) -> Path:
        """hotadd's directory on the host (scratch dirs, staged files)."""

    @abc.abstractmethod
    def run(self, argv: Sequence[str], timeout: float = 300.0,
            stdin: str | None = None) -> RunResult:
        """Run a program (no shell) and wait for it; `stdin`, if given, is its whole input."""

    @abc.abstractmethod
    def put(self, local: Path, remote: Path) -> None:
        """Copy a local file to the host."""

    @abc.abstractmethod
    def get(self, remote: Path, local: Path) -> None:
        """Copy a file from the host here."""

    @abc.abstractmethod
    def write_text(self, path: Path, text: str) -> None: ...

    @abc.abstractmethod
    def read_text(self, path: Path) -> str: ...

    @abc.abstractmethod
    def mkdir(self, path: Path, exist_ok: bool = True) -> None:
        """Create `path` and its parents, searchable by others (QEMU's user under a system
        libvirtd must reach the files below)."""

    @abc.abstractmethod
    def listdir(self, path: Path) -> list[tuple[str, int, float, bool]]:
        """(name, size, mtime, is_dir) of each entry; [] if `path` does not exist."""

    @abc.abstractmethod
    def exists(self, path: Path) -> bool: ...

    @abc.abstractmethod
    def rename(self, src: Path, dst: Path) -> None:
        """Atomic rename, replacing `dst` (POSIX rename(2))."""

    @abc.abstractmethod
    def touch(self, path: Path) -> None:
        """Set a file's mtime to now (the staged-file cache's LRU order)."""

    @abc.abstractmethod
    def remove(self, path: Path) -> None:
        """Remove a file or a whole tree; missing is fine."""

    @abc.abstractmethod
    def copy(self, src: Path, dst: Path) -> None:
        """Copy a file to another path on the host, there (never through this machine)."""

    @abc.abstractmethod
    def open_file(self, path: Path, mode: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        """A file on the host opened in binary `mode` ("rb", "wb") for the block."""

    @abc.abstractmethod
    def copy_tail(self, src: Path, dst: Path, offset: int) -> None:
        """Copy `src`'s bytes from `offset` to its end into `dst` at the same offset, `dst`'s
        first `offset` bytes left as they are; on the host (a save image's stream is GiBs)."""

    @abc.abstractmethod
    def lock(self, path: Path, shared: bool = False, wait: bool = True) -> FileLock | None:
        """flock `path` (created if missing) until the lock's `release()`; None if `wait` is
        False and another holds it. The lock is on the file the path names when it is granted:
        a holder may unlink its lock file while holding it (an evicted saved guest's), so one
        granted on an unlinked file is dropped and taken again on the path's new file."""

    def dialer(self) -> Dialer | None:
        """How a transport reaches the host's 127.0.0.1: None = directly from here."""
        return None

    def local_port(self, port: int) -> int:
        """A port on this machine's 127.0.0.1 that reaches `port` on the host's, for
        transports that take an address, not a socket (pywinrm's URL). Local: `port`."""
        return port

    def unsearchable(self, path: Path) -> Path | None:
        """The first of `path` and its parents (from the root down) that other users cannot
        search, or None: QEMU under a system libvirtd runs as an unprivileged user."""
        for p in [*reversed(path.parents), path]:
            if not self.mode(p) & 0o001:
                return p
        return None

    @abc.abstractmethod
    def mode(self, path: Path) -> int:
        """A file's st_mode."""

    def sha256(self, path: Path) -> str:
        """The sha256 of a file on the host (sha256sum there: no copy back)."""
        out = self.run(["sha256sum", "--", str(path)])
        if out.rc != 0:
            raise InfrastructureError(f"{self.description}: cannot hash {path}: "
                                      f"{out.stderr.strip()}", "check the file and disk space")
        return out.stdout.split()[0]

    def close(self) -> None:
        """Release the connection (a local target has none)."""
        return None


class LocalHost(HostTarget):
    """This machine: what hotadd did before there were remote hosts."""

    remote = False
    description = "this machine"

    def cache_root(self) -> Path:
        return paths.cache_root()

    def run(self, argv: Sequence[str], timeout: float = 300.0,
            stdin: str | None = None) -> RunResult:
        try:
            proc = subprocess.run(list(argv), capture_output=True, text=True, check=False,
                                  timeout=timeout, input=stdin)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return RunResult(tuple(argv), 127, "", str(exc))
        return RunResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)

    def put(self, local: Path, remote: Path) -> None:
        shutil.copyfile(local, remote)

    def get(self, remote: Path, local: Path) -> None:
        shutil.copyfile(remote, local)

    def write_text(self, path: Path, text: str) -> None:
        path.write_text(text)

    def read_text(self, path: Path) -> str:
        return path.read_text()

    def mkdir(self, path: Path, exist_ok: bool = True) -> None:
        path.mkdir(parents=True, exist_ok=exist_ok)

    def listdir(self, path: Path) -> list[tuple[str, int, float, bool]]:
        out = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(path):
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    out.append((entry.name, st.st_size, st.st_mtime, stat.S_ISDIR(st.st_mode)))
        return out

    def exists(self, path: Path) -> bool:
        return path.exists()

    def mode(self, path: Path) -> int:
        return path.stat().st_mode

    def rename(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)

    def touch(self, path: Path) -> None:
        os.utime(path)

    def remove(self, path: Path) -> None:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def copy(self, src: Path, dst: Path) -> None:
        shutil.copyfile(src, dst)

    def open_file(self, path: Path, mode: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        return open(path, mode)  # the caller's with-block closes it

    def copy_tail(self, src: Path, dst: Path, offset: int) -> None:
        with open(src, "rb") as s, open(dst, "r+b") as d:
            s.seek(offset)
            d.seek(offset)
            _copy_rest(s.fileno(), d.fileno())

    def lock(self, path: Path, shared: bool = False, wait: bool = True) -> FileLock | None:
        flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, flags)
            except BlockingIOError:
                os.close(fd)
                return None
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return LocalLock(fd)
            os.close(fd)

    def sha256(self, path: Path) -> str:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
        return h.hexdigest()


LOCAL = LocalHost()


class FileLock(abc.ABC):
    """A flock held on a host (`HostTarget.lock`)."""

    @abc.abstractmethod
    def release(self) -> None:
        """Let go; the lock is free when this returns. Idempotent."""


class LocalLock(FileLock):
    """A flock on this machine: an open descriptor (closing the last one drops the lock, and
    the kernel drops it when the process dies)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _copy_rest(src: int, dst: int) -> None:
    """Copy from `src`'s offset to its end into `dst` (in the kernel where it can)."""
    try:
        while os.copy_file_range(src, dst, 1 << 30):
            pass
    except OSError as exc:  # another file system, or a kernel without it: read and write
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
        with os.fdopen(os.dup(src), "rb") as s, os.fdopen(os.dup(dst), "wb") as d:
            shutil.copyfileobj(s, d, _CHUNK)


@dataclass(frozen=True)
class SshAddress:
    """Where a `qemu+ssh://` URI's host is and how libvirt's ssh transport logs in there
    (https://libvirt.org/uri.html: `keyfile`, `no_verify`, `known_hosts`)."""

    host: str
    port: int
    user: str
    keyfile: Path | None
    no_verify: bool
    known_hosts: Path | None

    @property
    def shown(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @classmethod
    def of(cls, uri: str) -> SshAddress:
        parts = urlsplit(uri)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if not parts.hostname:
            raise InputError(f"--libvirt-uri {uri} names no host",
                             "use qemu+ssh://USER@HOST[:PORT]/system")
        no_verify = query.get("no_verify", "0")
        if no_verify not in ("0", "1"):
            raise InputError(f"--libvirt-uri {uri}: no_verify={no_verify!r} (libvirt takes 0 "
                             "or 1)", "use no_verify=1 or leave it out")
        keyfile = query.get("keyfile")
        known = query.get("known_hosts")
        return cls(parts.hostname, parts.port or 22, parts.username or getpass.getuser(),
                   Path(keyfile) if keyfile else None, no_verify == "1",
                   Path(known) if known else None)


class _AcceptNew(paramiko.MissingHostKeyPolicy):
    """libvirt's no_verify=1: accept a host key not known yet (a known one is still checked)."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        return None


class SshHost(HostTarget):
    """A libvirt host reached over SSH (paramiko): commands over exec channels, files over
    SFTP, and its 127.0.0.1 over direct-tcpip channels of the same connection."""

    remote = True

    def __init__(self, address: SshAddress, cache: Path | None = None,
                 connect_timeout: float = 15.0) -> None:
        self.address = address
        self.description = f"host {address.shown}"
        self._cache = cache or Path(os.environ.get(REMOTE_CACHE_ENV) or REMOTE_CACHE_DEFAULT)
        self.connect_timeout = connect_timeout
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._lock = threading.RLock()  # SFTP requests of several threads in turn
        self._forwards: dict[int, LocalForward] = {}

    def cache_root(self) -> Path:
        return self._cache

    # -- connection ---------------------------------------------------------------------------

    def _transport(self) -> paramiko.Transport:
        with self._lock:
            if self._client is not None:
                t = self._client.get_transport()
                if t is not None and t.is_active():
                    return t
                self.close()
            self._client = self._connect()
            t = self._client.get_transport()
            assert t is not None
            return t

    def _connect(self) -> paramiko.SSHClient:
        a = self.address
        client = paramiko.SSHClient()
        fix = (f"check that 'ssh -p {a.port} {a.user}@{a.host}' works without a password "
               "(the URI's keyfile=, or your SSH agent and default keys)")
        try:
            if a.known_hosts is not None:
                client.load_host_keys(str(a.known_hosts))
            else:
                client.load_system_host_keys()
        except OSError as exc:
            raise InputError(f"cannot read the known hosts file {a.known_hosts}: {exc}",
                             "fix known_hosts= in the libvirt URI") from None
        client.set_missing_host_key_policy(_AcceptNew() if a.no_verify
                                           else paramiko.RejectPolicy())
        try:
            client.connect(a.host, port=a.port, username=a.user,
                           key_filename=str(a.keyfile) if a.keyfile else None,
                           look_for_keys=a.keyfile is None, allow_agent=a.keyfile is None,
                           timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                           auth_timeout=self.connect_timeout)
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostUnreachable(f"{self.description}: its SSH host key is not the one "
                                      f"known for it ({exc.key.get_name()})",
                                      "check you reach the right host; update known_hosts"
                                      ) from None
        except paramiko.SSHException as exc:
            client.close()
            unknown = "not found in known_hosts" in str(exc)
            raise HostUnreachable(
                f"{self.description}: SSH refused: {exc}",
                "add the host's key to known_hosts (ssh once by hand), or give the URI "
                "known_hosts=FILE, or no_verify=1" if unknown else fix) from None
        except (OSError, EOFError) as exc:
            client.close()
            raise HostUnreachable(f"{self.description}: cannot connect over SSH: {exc}",
                                      fix) from None
        return client

    def _files(self) -> paramiko.SFTPClient:
        with self._lock:
            if self._sftp is None or self._sftp.get_channel() is None or \
                    self._sftp.get_channel().closed:  # type: ignore[union-attr]
                self._sftp = paramiko.SFTPClient.from_transport(self._transport())
            assert self._sftp is not None
            return self._sftp

    def close(self) -> None:
        with self._lock:
            for forward in self._forwards.values():
                forward.close()
            self._forwards.clear()
            if self._sftp is not None:
                self._sftp.close()
                self._sftp = None
            if self._client is not None:
                self._client.close()
                self._client = None

    def _failed(self, what: str, exc: BaseException) -> InfrastructureError:
        return InfrastructureError(f"{self.description}: {what}: {exc}",
                                   "check the host's disk space and that the SSH login may "
                                   f"write under {self._cache} ({REMOTE_CACHE_ENV})")

    # -- commands -----------------------------------------------------------------------------

    def run(self, argv: Sequence[str], timeout: float = 300.0,
            stdin: str | None = None) -> RunResult:
        command = shlex.join(argv)
        out: list[bytes] = []
        err: list[bytes] = []
        deadline = time.monotonic() + timeout
        try:
            chan = self._transport().open_session(timeout=self.connect_timeout)
            try:
                chan.exec_command(command)
                if stdin:
                    chan.sendall(stdin.encode())
                chan.shutdown_write()
                # both streams drained as they come: a full stderr window never stalls stdout
                while not (chan.exit_status_ready() and chan.eof_received
                           and not chan.recv_ready() and not chan.recv_stderr_ready()):
                    if chan.recv_ready():
                        out.append(chan.recv(_CHUNK))
                    elif chan.recv_stderr_ready():
                        err.append(chan.recv_stderr(_CHUNK))
                    elif time.monotonic() > deadline:
                        raise TimeoutError(f"no exit after {timeout:.0f}s")
                    else:
                        select.select([chan], [], [], 0.5)
                rc = chan.recv_exit_status()
            finally:
                chan.close()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise self._failed(f"running {command[:200]} failed", exc) from None
        return RunResult(tuple(argv), rc, b"".join(out).decode(errors="replace"),
                         b"".join(err).decode(errors="replace"))

    def flock(self, path: Path, shared: bool = False) -> HostLock:
        """Take flock(1) on `path` on the host (created if missing), blocking until granted;
        held for as long as the returned lock (its command on an exec channel) lives. The
        host's kernel drops it when the command ends: on `release()`, or when this process
        dies and sshd closes the session (its `cat` reads end of file)."""
        held = self._lock_command(path, ["flock", "-s" if shared else "-x", str(path), "sh",
                                          "-c", f"echo {_LOCKED}; exec cat"])
        assert held is not None
        return held

    def lock(self, path: Path, shared: bool = False, wait: bool = True) -> HostLock | None:
        """`HostTarget.lock` on the host: a shell there opens the file, flocks it and checks
        it is still the one at the path (else opens it again), then becomes `cat`, which holds
        it as `flock` does."""
        mode = ["-s" if shared else "-x"] + ([] if wait else ["-n"])
        held = self._lock_command(path, ["sh", "-c", _LOCK_SCRIPT, "sh", str(path), *mode])
        if held is None and wait:
            raise InfrastructureError(f"{self.description}: flock on {path} failed",
                                      "check that flock (util-linux) is installed there")
        return held

    def _lock_command(self, path: Path, argv: list[str]) -> HostLock | None:
        """Run a lock command; the lock once it says it holds it, None once it says another
        holds it (a lock asked for without waiting)."""
        try:
            chan = self._transport().open_session(timeout=self.connect_timeout)
            chan.exec_command(shlex.join(argv))
            said = b""
            while not said.endswith(f"{_LOCKED}\n".encode()):
                if said.endswith(f"{_BUSY}\n".encode()):
                    chan.close()
                    return None
                data = chan.recv(64)
                if not data:
                    err = b""
                    while chan.recv_stderr_ready():
                        err += chan.recv_stderr(_CHUNK)
                    chan.close()
                    raise OSError(f"{argv[0]} exited {chan.recv_exit_status()}: "
                                  f"{err.decode(errors='replace').strip()}")
                said += data
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise InfrastructureError(f"{self.description}: cannot lock {path}: {exc}",
                                      "check that flock (util-linux) is installed there and "
                                      f"the SSH login may write under {self._cache}") from None
        return HostLock(chan)

    # -- files --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _sftp_doing(self, what: str, missing_ok: bool = False) -> Iterator[paramiko.SFTPClient]:
        """The SFTP client, held by this thread for the block; a failure in the block becomes
        the error saying `what` could not be done. With `missing_ok`, FileNotFoundError passes
        through, for a caller to whom a missing file is an answer."""
        try:
            with self._lock:
                yield self._files()
        except (OSError, paramiko.SSHException) as exc:
            if missing_ok and isinstance(exc, FileNotFoundError):
                raise
            raise self._failed(what, exc) from None

    def put(self, local: Path, remote: Path) -> None:
        with self._sftp_doing(f"cannot send {local} to {remote}") as sftp:
            sftp.put(str(local), str(remote), confirm=True)

    def get(self, remote: Path, local: Path) -> None:
        with self._sftp_doing(f"cannot fetch {remote}") as sftp:
            sftp.get(str(remote), str(local))

    def write_text(self, path: Path, text: str) -> None:
        with self._sftp_doing(f"cannot write {path}") as sftp, sftp.open(str(path), "w") as f:
            f.write(text.encode())

    def create_text(self, path: Path, text: str) -> None:
        """Write a new file; FileExistsError-like InfrastructureError if `path` exists
        (SFTP's open with SSH_FXF_CREAT|SSH_FXF_EXCL: O_EXCL on the host)."""
        with self._sftp_doing(f"cannot create {path}") as sftp, sftp.open(str(path), "wx") as f:
            f.write(text.encode())

    def read_text(self, path: Path) -> str:
        with self._sftp_doing(f"cannot read {path}") as sftp, sftp.open(str(path), "r") as f:
            return bytes(f.read()).decode(errors="replace")

    def mkdir(self, path: Path, exist_ok: bool = True) -> None:
        with self._lock:
            sftp = self._files()
            missing = []
            for p in [path, *path.parents]:
                try:
                    sftp.stat(str(p))
                    break
                except FileNotFoundError:
                    missing.append(p)
                except OSError as exc:
                    raise self._failed(f"cannot look at {p}", exc) from None
            if not missing and not exist_ok:
                raise FileExistsError(str(path))
            for p in reversed(missing):
                try:
                    sftp.mkdir(str(p), mode=0o755)
                    sftp.chmod(str(p), 0o755)  # the login's umask may have taken bits off
                except OSError as exc:
                    if p == path and not exist_ok:
                        raise FileExistsError(str(path)) from None
                    if not self.exists(p):
                        raise self._failed(f"cannot create {p}", exc) from None

    def listdir(self, path: Path) -> list[tuple[str, int, float, bool]]:
        try:
            with self._sftp_doing(f"cannot list {path}", missing_ok=True) as sftp:
                entries = sftp.listdir_attr(str(path))
        except FileNotFoundError:
            return []
        return [(e.filename, e.st_size or 0, float(e.st_mtime or 0),
                 stat.S_ISDIR(e.st_mode or 0)) for e in entries]

    def exists(self, path: Path) -> bool:
        try:
            with self._sftp_doing(f"cannot look at {path}", missing_ok=True) as sftp:
                sftp.stat(str(path))
        except FileNotFoundError:
            return False
        return True

    def mode(self, path: Path) -> int:
        with self._sftp_doing(f"cannot look at {path}") as sftp:
            return sftp.stat(str(path)).st_mode or 0

    def rename(self, src: Path, dst: Path) -> None:
        with self._sftp_doing(f"cannot rename {src} to {dst}") as sftp:
            sftp.posix_rename(str(src), str(dst))

    def touch(self, path: Path) -> None:
        now = time.time()
        with self._sftp_doing(f"cannot touch {path}") as sftp:
            sftp.utime(str(path), (now, now))

    def remove(self, path: Path) -> None:
        if path in (Path("/"), self._cache) or not path.is_relative_to(self._cache):
            raise InfrastructureError(f"{self.description}: refusing to remove {path}, which "
                                      f"is not under hotadd's directory {self._cache}",
                                      "this is a hotadd bug: report it")
        out = self.run(["rm", "-rf", "--", str(path)])
        if out.rc != 0:
            raise self._failed(f"cannot remove {path}", OSError(out.stderr.strip()))

    def copy(self, src: Path, dst: Path) -> None:
        out = self.run(["cp", "--", str(src), str(dst)])
        if out.rc != 0:
            raise self._failed(f"cannot copy {src} to {dst}", OSError(out.stderr.strip()))

    @contextlib.contextmanager
    def open_file(self, path: Path, mode: str) -> Iterator[IO[bytes]]:
        with self._sftp_doing(f"cannot open {path}") as sftp, \
                sftp.open(str(path), mode.replace("b", "")) as f:
            yield cast("IO[bytes]", f)  # paramiko's SFTPFile: a binary file object

    def copy_tail(self, src: Path, dst: Path, offset: int) -> None:
        """dd on the host, byte offsets (coreutils' iflag=skip_bytes, oflag=seek_bytes)."""
        out = self.run(["dd", f"if={src}", f"of={dst}", f"skip={offset}", f"seek={offset}",
                        "bs=4M", "iflag=skip_bytes", "oflag=seek_bytes", "conv=notrunc",
                        "status=none"], timeout=SAVE_COPY_TIMEOUT_S)
        if out.rc != 0:
            raise self._failed(f"cannot copy {src} to {dst}", OSError(out.stderr.strip()))

    # -- the host's 127.0.0.1 -----------------------------------------------------------------

    def dialer(self) -> Dialer:
        def dial(port: int, timeout: float) -> paramiko.Channel:
            try:
                return self._transport().open_channel(
                    "direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 0), timeout=timeout)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                # the same kinds a refused direct connect raises: the transport's retry loop
                # (wait_ready) sees a guest that does not answer yet
                raise ConnectionRefusedError(
                    f"127.0.0.1:{port} on {self.address.shown}: {exc}") from None
        return dial

    def local_port(self, port: int) -> int:
        """A listener on this machine's 127.0.0.1 whose every connection is a direct-tcpip
        channel to `port` on the host's (like `ssh -L`); open until `close()`."""
        with self._lock:
            if port not in self._forwards:
                self._forwards[port] = LocalForward(self.dialer(), port)
            return self._forwards[port].port


class HostLock(FileLock):
    """A flock held on a remote host by a command on an SSH exec channel (`SshHost.flock`,
    `SshHost.lock`)."""

    def __init__(self, chan: paramiko.Channel) -> None:
        self._chan = chan

    def release(self) -> None:
        """End the command (its `cat` reads end of file), and wait until it has: the lock is
        free on the host when this returns. Idempotent; a lost connection released it too."""
        if self._chan.closed:
            return
        with contextlib.suppress(paramiko.SSHException, OSError, EOFError):
            self._chan.shutdown_write()
            self._chan.recv_exit_status()
        self._chan.close()


class LocalForward:
    """Accepts on 127.0.0.1 here and pipes each connection to a dialled stream (one thread
    per direction); only loopback listens, so nothing beyond this machine can use it."""

    def __init__(self, dial: Dialer, target_port: int, timeout: float = 15.0) -> None:
        self._dial, self._target, self._timeout = dial, target_port, timeout
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(16)
        self.port: int = self._server.getsockname()[1]
        self._closed = threading.Event()
        threading.Thread(target=self._accept, name=f"forward-{self.port}", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            try:
                far = self._dial(self._target, self._timeout)
            except OSError:
                conn.close()  # the client sees the refusal as a closed connection
                continue
            for a, b in ((conn, far), (far, conn)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()


def _pipe(src: Any, dst: Any) -> None:
    """Copy until `src` ends, then end `dst`'s sending side."""
    try:
        while data := src.recv(_CHUNK):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            if isinstance(dst, socket.socket):
                dst.shutdown(socket.SHUT_WR)
            else:
                dst.shutdown_write()


def is_remote_uri(uri: str | None) -> bool:
    """Whether `uri` names a libvirt on another machine (a host part or a network
    transport); qemu:///..., qemu+unix:///... are this machine."""
    if not uri:
        return False
    parts = urlsplit(uri)
    _, _, transport = parts.scheme.partition("+")
    return bool(parts.netloc) or transport not in ("", "unix")


def target_for(uri: str | None) -> HostTarget:
    """The host a libvirt URI runs QEMU on. Remote hosts are supported over qemu+ssh://
    only: the guest's files and its transport need an SSH connection to the host."""
    if not is_remote_uri(uri):
        return LOCAL
    assert uri is not None
    check_remote_uri(uri)
    return SshHost(SshAddress.of(uri))


def check_remote_uri(uri: str) -> None:
    """Refuse, before anything starts, a remote URI a run cannot use."""
    parts = urlsplit(uri)
    if parts.scheme != "qemu+ssh":
        raise InputError(
            f"--libvirt-uri {uri}: a run on a remote host needs libvirt's ssh transport: "
            "hotadd stages the guest's files and reaches the guest over that SSH login",
            "use qemu+ssh://USER@HOST[:PORT]/system (https://libvirt.org/uri.html)")
    if parts.path != "/system":
        raise InputError(f"--libvirt-uri {uri}: a remote host's QEMU driver is used through "
                         "its system libvirtd", "use qemu+ssh://USER@HOST/system")
    SshAddress.of(uri)

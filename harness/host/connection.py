"""Opening libvirt: the default embedded QEMU driver, any other URI, and the one event thread.

`qemu:///embed?root=DIR` runs libvirt's QEMU driver inside this process: nothing to start, and
each root can be held by one process at a time (libvirt locks `DIR/run/qemu/driver.pid`).
A process gets one connection to its embedded root and keeps it: every `virConnectOpen` of an
embed URI loads and registers the QEMU driver module again, libvirt's driver table has room for
about 16 such registrations (MAX_DRIVERS in src/libvirt.c), and a full table refuses every later
open with "Too many drivers, cannot register QEMU". Events
(lifecycle, QEMU monitor events such as ACPI_DEVICE_OST) need libvirt's default event loop,
registered once per process before the first connection and run by one daemon thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import libvirt

from harness import paths
from harness.errors import InputError, LibvirtUnreachable

_loop_lock = threading.Lock()
_loop_started = False
_embed_root_in_use: Path | None = None  # libvirt allows one embedded root per process
_embedded: _EmbeddedConnection | None = None  # the process's connection to that root
_embedded_lock = threading.Lock()
# ROOT/lib/qemu/domain-N-<20 chars of name>/monitor.sock must fit in sun_path (107 bytes).
EMBED_ROOT_MAX = 52

# libvirt prints every error to stderr by default; we raise them with context instead.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def ensure_event_loop() -> None:
    """Register libvirt's default event implementation and start its thread, once per process.

    The thread only runs `virEventRunDefaultImpl()`; callbacks that run on it must not block
    (see `harness.host.events`).
    """
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True


def default_uri() -> str:
    """HOTADD_LIBVIRT_URI if set, else the per-user embedded QEMU driver."""
    return os.environ.get("HOTADD_LIBVIRT_URI") or paths.default_libvirt_uri()


def embed_root(uri: str) -> Path | None:
    """The root directory of a `qemu:///embed` URI, or None for any other URI."""
    parts = urlsplit(uri)
    if parts.scheme != "qemu" or parts.path != "/embed":
        return None
    roots = parse_qs(parts.query).get("root")
    return Path(roots[0]) if roots else None


# libvirt's URI forms (https://libvirt.org/uri.html) and the QEMU driver's paths
# (https://libvirt.org/drvqemu.html#connections-to-qemu-driver): hotadd drives QEMU only.
_QEMU_PATHS = ("/system", "/session", "/embed")
_URI_FIX = ("use the default qemu:///embed?root=DIR (no daemon), qemu:///system (libvirtd), or "
            "qemu+ssh://HOST/system; see https://libvirt.org/uri.html")


def check_uri(uri: str) -> None:
    """Refuse, before anything starts, a URI hotadd cannot run on: another driver (test://,
    xen://, ...), a malformed one, or an embedded driver without its root."""
    parts = urlsplit(uri)
    driver, _, transport = parts.scheme.partition("+")
    if not parts.scheme or "://" not in uri:
        raise InputError(f"--libvirt-uri {uri!r} is not a libvirt URI (DRIVER[+TRANSPORT]://"
                         "[HOST]/PATH)", _URI_FIX)
    if driver != "qemu":
        raise InputError(f"--libvirt-uri {uri} uses libvirt's {driver!r} driver; hotadd hot-adds "
                         "through the QEMU driver (QEMU monitor events, real vCPUs)", _URI_FIX)
    if parts.path not in _QEMU_PATHS:
        raise InputError(f"--libvirt-uri {uri}: the QEMU driver has no path {parts.path!r} "
                         f"(it has {', '.join(_QEMU_PATHS)})", _URI_FIX)
    if parts.path == "/embed":
        if transport or parts.netloc:
            raise InputError(f"--libvirt-uri {uri}: the embedded driver runs in this process; "
                             "it takes no host or transport", "use qemu:///embed?root=DIR")
        roots = parse_qs(parts.query).get("root")
        if not roots or not roots[0].startswith("/"):
            raise InputError(f"--libvirt-uri {uri}: qemu:///embed needs root=, an absolute "
                             "directory for the driver's state",
                             f"use qemu:///embed?root=DIR, e.g. the default "
                             f"qemu:///embed?root={paths.libvirt_embed_root_path()}")
        root = Path(roots[0])
        if len(str(root)) > EMBED_ROOT_MAX:
            raise InputError(
                f"the embedded libvirt root {root} is {len(str(root))} characters long: QEMU's "
                f"monitor socket under it would exceed the 107-byte UNIX socket path limit",
                f"use a root path of at most {EMBED_ROOT_MAX} characters (e.g. under /tmp)")
        if root.exists() and not root.is_dir():
            raise InputError(f"the embedded libvirt root {root} is not a directory",
                             "give root= a directory (it is created if missing)")


def _prepare_embed_root(root: Path) -> None:
    """Make the root usable: QEMU runs as the invoking user so it can read files under $HOME.

    As root, libvirt's default would be the `libvirt-qemu` user, which cannot traverse /root.
    """
    etc = root / "etc"
    try:
        etc.mkdir(parents=True, exist_ok=True)
        _write_qemu_conf(etc)
    except OSError as exc:
        raise InputError(f"the embedded libvirt root {root} is unusable: "
                         f"{exc.strerror or exc} ({exc.filename or root})",
                         "give --libvirt-uri 'qemu:///embed?root=DIR' a writable directory "
                         "(or HOTADD_LIBVIRT_URI / HOTADD_CACHE_DIR)") from None


def _write_qemu_conf(etc: Path) -> None:
    (etc / "qemu.conf").write_text(
        "# written by hotadd: run QEMU as the user who runs the harness\n"
        f'user = "+{os.getuid()}"\ngroup = "+{os.getgid()}"\n'
        "dynamic_ownership = 0\n"
        'security_driver = "none"\n'
        # QEMU's own stdout/stderr to a file: virtlogd is a daemon, and we want none
        'stdio_handler = "file"\n'
    )


def _embed_root_busy(root: Path) -> bool:
    """True when another process holds the embedded driver's lock on `root`."""
    pidfile = root / "run" / "qemu" / "driver.pid"
    try:
        fd = os.open(pidfile, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _fix_for(uri: str, exc: libvirt.libvirtError) -> str:
    root = embed_root(uri)
    if root is not None:
        if _embed_root_busy(root):
            return (f"another process holds the embedded libvirt root {root}; wait for it to "
                    "finish, or give this run its own root with --libvirt-uri "
                    "'qemu:///embed?root=/some/other/dir' (or HOTADD_LIBVIRT_URI)")
        if exc.get_error_code() == libvirt.VIR_ERR_INVALID_ARG:
            return ("install libvirt's QEMU driver and its system user: "
                    "apt-get install libvirt-daemon-driver-qemu libvirt-daemon-system")
        return "install qemu-system-x86 and libvirt-daemon-driver-qemu (run ./setup.sh install)"
    parts = urlsplit(uri)
    if "+ssh" in parts.scheme:
        return (f"check that 'ssh {parts.hostname}' works without a password and that libvirtd "
                "runs there (systemctl status libvirtd)")
    return ("start the libvirt daemon (systemctl start libvirtd, or 'virtlogd -d && libvirtd -d' "
            "where there is no systemd), or use the daemonless default qemu:///embed")


@dataclass(frozen=True)
class HostVersions:
    libvirt: str
    qemu: str


def _version(n: int) -> str:
    return f"{n // 1_000_000}.{n // 1000 % 1000}.{n % 1000}"


class _EmbeddedConnection(libvirt.virConnect):  # type: ignore[misc]  # libvirt is untyped
    """The process's one connection to its embedded root, handed to every caller.

    `close()` leaves it open for the next caller (reopening would spend a driver-table slot);
    it closes when the process exits. Callers deregister the event callbacks they registered
    (`harness.host.events` does), so nothing of a finished run stays attached to it.
    """

    def close(self) -> int:
        return 1  # what virConnectClose returns while other references remain


def open_connection(uri: str | None = None) -> libvirt.virConnect:
    """Open `uri` (default: `default_uri()`) with the event loop running.

    An embedded root's connection is opened once per process and shared (see the module's
    docstring). Raises LibvirtUnreachable naming the URI and what to do about it.
    """
    uri = uri or default_uri()
    root = embed_root(uri)
    if root is not None and root == paths.libvirt_embed_root_path():
        paths.cache_dir()  # the default root: say so first if the cache itself is unusable
    check_uri(uri)
    ensure_event_loop()
    conn = _open(uri) if root is None else _open_embedded(uri, root)
    remember_uri(uri)  # this machine's libvirts and the remote hosts its runs used
    return conn


def _open(uri: str) -> libvirt.virConnect:
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        problem = f"cannot open libvirt at {uri}: {exc.get_error_message()}"
        raise LibvirtUnreachable(problem, _fix_for(uri, exc)) from exc


def _open_embedded(uri: str, root: Path) -> libvirt.virConnect:
    global _embed_root_in_use, _embedded
    with _embedded_lock:
        if _embedded is not None and root == _embed_root_in_use and _embedded.isAlive():
            return _embedded
        if _embed_root_in_use is not None and root != _embed_root_in_use:
            # libvirt would refuse too, after spending a driver-table slot on the attempt
            raise LibvirtUnreachable(
                f"cannot open libvirt at {uri}: this process already runs the embedded QEMU "
                f"driver at {_embed_root_in_use}",
                f"libvirt allows one embedded root per process: use "
                f"qemu:///embed?root={_embed_root_in_use} here too, or a subprocess")
        _prepare_embed_root(root)
        opened = _open(uri)
        # hand libvirt's reference to the shared wrapper; `opened` must not close it too
        _embedded = _EmbeddedConnection(_obj=opened._o)
        opened._o = None
        _embed_root_in_use = root
        return _embedded


# Every libvirt URI hotadd opened, one per line, so `hotadd sweep` can say which it did not
# look at and `--all` can sweep them: a killed run leaves its QEMU under whatever root it
# used, or its domain and scratch dir on whatever remote host it ran on.
_URIS_FILE = "libvirt-uris"
#: Query parameters of libvirt's ssh transport that name a file this machine must have for
#: the URI to be usable (https://libvirt.org/uri.html#ssh-transport).
_URI_FILES = ("keyfile", "known_hosts", "command")


def remember_uri(uri: str) -> None:
    """Add `uri` to the cache's list (best effort: a read-only cache only loses the note).
    Every run calls this: it reads the raw lines, without known_uris' check of each root
    (the list keeps the roots of every temporary directory a test or benchmark used).
    A password in a URI's user part is never written (libvirt's ssh transport takes none,
    and the list is a plain file)."""
    uri = _without_password(uri)
    if uri in _uri_lines():
        return
    with contextlib.suppress(OSError), (paths.cache_root() / _URIS_FILE).open("a") as f:
        f.write(uri + "\n")


def known_uris() -> list[str]:
    """The URIs hotadd opened on this host, without embedded roots that no longer exist and
    without remote URIs whose key, known-hosts or ssh command file is gone (nobody can log
    in with them again: a lab host of a test, say)."""
    out: list[str] = []
    for uri in _uri_lines():
        root = embed_root(uri)
        if uri and uri not in out and (root is None or root.is_dir()) and _files_exist(uri):
            out.append(uri)
    return out


def _files_exist(uri: str) -> bool:
    query = parse_qs(urlsplit(uri).query)
    return all(Path(v).exists() for k in _URI_FILES for v in query.get(k, []))


def _without_password(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username}@{host}").geturl()


def _uri_lines() -> list[str]:
    try:
        return (paths.cache_root() / _URIS_FILE).read_text().splitlines()
    except OSError:
        return []


def versions(conn: libvirt.virConnect) -> HostVersions:
    return HostVersions(libvirt=_version(conn.getLibVersion()), qemu=_version(conn.getVersion()))

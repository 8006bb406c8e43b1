"""The reference guest: a Debian kernel + busybox initramfs with dropbear and the probe module.

`build()` assembles it from Debian packages into the per-user cache, keyed by a hash of its
inputs (the files in vm/reference/, this module, the kernel/busybox/dropbear package versions),
so it is rebuilt exactly when one of them changes and costs one directory lookup otherwise.
The kernel comes from `apt-get download linux-image-<release>` matching the installed
linux-headers-amd64 (the probe module is built against those headers), never from the host's
/boot. The guest-side helpers (`connect`, `load_probe`, ...) are what a scenario calls once the
guest is up; booting it is the host layer's business.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harness import paths
from harness.clock import ClockSample
from harness.errors import InfrastructureError, InputError, TransportError
from harness.guests.cpio import CpioWriter
from harness.host.health import ConsoleAlarm, Severity
from harness.host.target import LOCAL, HostTarget
from harness.progress import Progress
from harness.transport.base import Transport
from harness.transport.ssh import SshTransport

SOURCE_DIR = paths.REPO_ROOT / "vm" / "reference"
PROBE_SOURCE_DIR = SOURCE_DIR / "probe"
#: The example developer module (`--with-module`), built beside the probe; see its source.
EXAMPLE_SOURCE_DIR = SOURCE_DIR / "example"
EXAMPLE_MODULE = "hotadd_example.ko"
APT_ARCHIVES = Path("/var/cache/apt/archives")

#: Kernel command line. `console=ttyS0` for the serial log, with the boot messages (not `quiet`:
#: a guest that never gets ready must leave a useful log; it costs no measurable boot time);
#: `panic=0` leaves a panicked guest where it is (pvpanic tells the host); `mitigations=off`
#: and `tsc=reliable` spare TCG work and clocksource-watchdog noise.
CMDLINE = "console=ttyS0 panic=0 mitigations=off tsc=reliable"

#: Linux (x86-64) picks the "physical flat" APIC driver, which addresses IPIs by APIC ID, once
#: it counts more than 8 possible CPUs; with 8 or fewer it uses logical flat mode. QEMU 7.2's
#: userspace APIC (TCG) delivers a logical-mode IPI only to CPUs before the first unused APIC ID
#: (apic_get_delivery_bitmask() stops at the first empty slot of local_apics[], indexed by APIC
#: ID: https://gitlab.com/qemu-project/qemu/-/blob/v7.2.0/hw/intc/apic.c), so a CPU whose APIC
#: ID lies beyond a hole never hears a reschedule IPI and stop_machine() waits on it (seen: >26 s).
#: See vm/reference/README.md, "Why possible_cpus".
PHYSFLAT_MIN_POSSIBLE_CPUS = 9

#: A hot-added CPU of a qemu64 guest (no constant_tsc) calibrates its delay loop against the
#: timer tick (calibrate_delay_direct(), then the slower converge when that fails, as it did
#: here under TCG); on a loaded 2-core host that took 0.5-2.6 s of a 1.3-3.2 s add, measured from
#: the guest's own log. A preset `lpj` skips it (0.36-0.79 s per add under the same load).
#: x86 udelay() scales TSC cycles by lpj, so the value must not be too small: 20,000,000 is
#: the TSC rate of a 5 GHz host at HZ=250, so delays are at worst about twice as long as asked.
PRESET_LPJ = 20_000_000


def kernel_cmdline(image_cmdline: str, max_vcpus: int) -> str:
    """The image's command line plus the per-run parameters: `possible_cpus` at least 9, so
    that Linux addresses IPIs by physical APIC ID on any topology and in any hot-add order, and
    a preset `lpj`, so a hot-added CPU does not calibrate its delay loop."""
    return (f"{image_cmdline} possible_cpus={max(max_vcpus, PHYSFLAT_MIN_POSSIBLE_CPUS)}"
            f" lpj={PRESET_LPJ}")

#: Kernel modules the guest loads at boot (with their dependencies): network and pvpanic.
BOOT_MODULES = ("virtio_pci", "virtio_net", "pvpanic_mmio", "pvpanic_pci")

GUEST_USER = "root"
GUEST_PROBE_PATH = "/lib/hotadd/hotadd_probe.ko"
GUEST_PROBE_NAME = "hotadd_probe"
GUEST_RECORDS_PATH = "/proc/hotadd_probe/records"

#: Kernel messages that mean the guest is sick (Linux 6.1 wording). With the kernel's default
#: thresholds the soft-lockup detector fires after 20 s (2 x watchdog_thresh=10), the RCU stall
#: detector after about 21 s, the hung-task detector after 120 s.
CONSOLE_ALARMS = (
    ConsoleAlarm("kernel panic", re.compile(r"Kernel panic - not syncing"), Severity.CRASH),
    ConsoleAlarm("oops", re.compile(
        r"BUG: kernel NULL pointer dereference|BUG: unable to handle|"
        r"general protection fault|kernel BUG at|\bOops: "),
        Severity.CRASH),
    ConsoleAlarm("soft lockup", re.compile(r"BUG: soft lockup - CPU#\d+ stuck"),
                 Severity.WEDGED),
    ConsoleAlarm("hard lockup", re.compile(r"Watchdog detected hard LOCKUP"), Severity.WEDGED),
    ConsoleAlarm("RCU stall", re.compile(r"rcu: INFO: \w+ (self-)?detected stall"),
                 Severity.WEDGED),
    ConsoleAlarm("hung task", re.compile(r"INFO: task \S+ blocked for more than \d+ seconds"),
                 Severity.WEDGED),
)

#: Serial-console lines the guest prints (the host layer waits for / asserts on them).
READY_MARKER = "hotadd-guest: ready"
CPU_ONLINE_LINE = "hotadd-guest: cpu{cpu} online"
CPU_ONLINE_FAILED_LINE = "hotadd-guest: cpu{cpu} online failed"
PROBE_RECORD_PREFIX = "hotadd-probe: "

#: The NTSTATUS the probe reports for a veto errno (in a vetoed start's op_status, the failure's
#: status, and register_failed's status). Mirrors errno_to_ntstatus() in hotadd_probe.c;
#: tests/vm/test_probe_module.py checks the two agree in the real guest.
NTSTATUS_BY_ERRNO: Mapping[int, int] = {
    errno.ENOMEM: 0xC000009A,  # STATUS_INSUFFICIENT_RESOURCES
    errno.EIO: 0xC0000185,  # STATUS_IO_DEVICE_ERROR
    errno.EINVAL: 0xC000000D,  # STATUS_INVALID_PARAMETER
    errno.EPERM: 0xC0000022,  # STATUS_ACCESS_DENIED
    errno.EACCES: 0xC0000022,  # STATUS_ACCESS_DENIED
    errno.ENODEV: 0xC000000E,  # STATUS_NO_SUCH_DEVICE
    errno.EBUSY: 0xC00000AE,  # STATUS_PIPE_BUSY
    errno.ETIMEDOUT: 0xC00000B5,  # STATUS_IO_TIMEOUT
    errno.EOPNOTSUPP: 0xC00000BB,  # STATUS_NOT_SUPPORTED
    errno.ENOSPC: 0xC000007F,  # STATUS_DISK_FULL
}
NTSTATUS_OTHER_ERRNO = 0xC0000001  # STATUS_UNSUCCESSFUL, for any errno not in the table


def ntstatus_for_errno(err: int) -> int:
    return NTSTATUS_BY_ERRNO.get(err, NTSTATUS_OTHER_ERRNO)


def errno_for_ntstatus(status: int) -> int | None:
    """An errno the probe reports as `status` (the first in the table), or None if none does."""
    return next((e for e, s in NTSTATUS_BY_ERRNO.items() if s == status), None)


_IMAGE_FILE = "image.json"
#: sha256sum(1) format, written last by a build: what `build()` checks before every use, so a
#: truncated kernel or initramfs is rebuilt instead of costing a guest that never gets ready.
_SUMS_FILE = "sha256sums"
_HASHED = ("vmlinuz", "initrd.img", "id_ed25519", "hotadd_probe.ko", EXAMPLE_MODULE,
           _IMAGE_FILE)
_KEEP_BUILDS = 2
_PRUNE_AFTER_S = 24 * 3600
_HEADERS_META = "linux-headers-amd64"
_APT_FIX = "apt-get install linux-headers-amd64 busybox-static dropbear-bin kmod"


@dataclass(frozen=True)
class ReferenceImage:
    """A built reference guest: what the host layer boots and how to reach it."""

    kernel: Path
    initrd: Path
    cmdline: str
    private_key: Path  # the client key dropbear authorizes (mode 0600)
    host_key_line: str  # dropbear's host public key, "ssh-ed25519 AAAA..."
    kernel_version: str  # uname -r of the guest, e.g. 6.1.0-56-amd64
    build_dir: Path

    def to_json(self) -> str:
        data = {k: str(v) for k, v in dataclasses.asdict(self).items()}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ReferenceImage:
        d = json.loads(text)
        return cls(
            kernel=Path(d["kernel"]),
            initrd=Path(d["initrd"]),
            cmdline=d["cmdline"],
            private_key=Path(d["private_key"]),
            host_key_line=d["host_key_line"],
            kernel_version=d["kernel_version"],
            build_dir=Path(d["build_dir"]),
        )


class ProbeFault(enum.Enum):
    """A real fault the probe can inject into a hot-add's "start" (health-watch tests)."""

    LOCKUP = "lockup"  # spin with preemption off: soft lockup
    HANG = "hang"  # sleep uninterruptibly forever: hung task
    OOPS = "oops"  # NULL dereference
    PANIC = "panic"


@dataclass(frozen=True)
class FaultInjection:
    fault: ProbeFault
    cpu: int  # the Linux CPU id whose hot-add start faults (the first add gets the boot count)

    def __post_init__(self) -> None:
        if self.cpu < 0:
            raise InputError(f"fault cpu={self.cpu} is not a CPU number", "give a CPU id >= 0")


#: The kernel detector a fault trips, tuned to report in about 2 s instead of 20-120 s. Only
#: the one for the injected fault: a 1 s hung-task timeout would also flag the tasks a lockup
#: blocks (they wait for the CPU-hotplug lock the spinning task holds).
FAULT_SYSCTLS: Mapping[ProbeFault, Mapping[str, str]] = {
    ProbeFault.LOCKUP: {"/proc/sys/kernel/watchdog_thresh": "1"},  # soft lockup after 2 s
    ProbeFault.HANG: {"/proc/sys/kernel/hung_task_timeout_secs": "1"},
    ProbeFault.OOPS: {},
    ProbeFault.PANIC: {},
}


@dataclass(frozen=True)
class ProbeParams:
    """Module parameters of the probe (see vm/reference/probe/hotadd_probe.c)."""

    flags: int = 1  # 1 = replay CPUs already online (ADD_EXISTING), 0 = no replay
    veto_cpu: int | None = None  # CPU whose prepare stage ("start") is vetoed
    veto_errno: int = 12  # positive errno of the veto (12 = ENOMEM -> 0xC000009A)
    fault: FaultInjection | None = None

    def __post_init__(self) -> None:
        if self.flags not in (0, 1):
            raise InputError(f"probe flags={self.flags}: only 0 and 1 are defined",
                             "use flags=1 (replay existing CPUs) or flags=0")
        if self.veto_cpu is not None and self.veto_cpu < 0:
            raise InputError(f"veto_cpu={self.veto_cpu} is not a CPU number",
                             "give a CPU id >= 0, or None for no veto")
        if not 1 <= self.veto_errno <= 4095:
            raise InputError(f"veto_errno={self.veto_errno} is not a positive errno",
                             "give an errno between 1 and 4095, e.g. 12 (ENOMEM)")

    def insmod_args(self) -> list[str]:
        fault = ([f"fault={self.fault.fault.value}", f"fault_cpu={self.fault.cpu}"]
                 if self.fault else [])
        return [
            f"flags={self.flags}",
            f"veto_cpu={-1 if self.veto_cpu is None else self.veto_cpu}",
            f"veto_errno={self.veto_errno}",
            *fault,
        ]


# -- versions and inputs ----------------------------------------------------------------------


def _run(argv: list[str], what: str, fix: str, cwd: Path | None = None) -> str:
    """Run a build tool; return its stdout or raise InfrastructureError with its stderr."""
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise InfrastructureError(f"{what}: {argv[0]} is not installed", fix) from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-3000:]
        raise InfrastructureError(f"{what} failed (exit {proc.returncode}): {tail}", fix)
    return proc.stdout


def _package_version(package: str) -> str | None:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}\t${Version}", package],
        capture_output=True, text=True, check=False,
    )
    status, _, version = proc.stdout.partition("\t")
    return version if proc.returncode == 0 and status.endswith(" installed") else None


@dataclass(frozen=True)
class _Versions:
    kernel_release: str  # 6.1.0-56-amd64
    kernel_package: str  # 6.1.192-2
    busybox: str
    dropbear: str


def _versions() -> _Versions:
    if _package_version(_HEADERS_META) is None:
        raise InfrastructureError(
            "the kernel headers for the reference guest's probe module are not installed "
            f"({_HEADERS_META})", f"apt-get install {_HEADERS_META}")
    depends = _run(["dpkg-query", "-W", "-f=${Depends}", _HEADERS_META],
                   "reading linux-headers-amd64's dependencies", _APT_FIX)
    match = re.search(r"linux-headers-(\S+-amd64)", depends)
    if match is None:
        raise InfrastructureError(
            f"cannot tell the kernel release from {_HEADERS_META}'s dependencies: {depends!r}",
            f"reinstall it: apt-get install --reinstall {_HEADERS_META}")
    release = match.group(1)
    kernel_package = _package_version(f"linux-headers-{release}")
    headers = Path(f"/usr/src/linux-headers-{release}")
    if kernel_package is None or not (headers / "Makefile").is_file():
        raise InfrastructureError(f"kernel headers {headers} are missing",
                                  f"apt-get install {_HEADERS_META}")
    busybox = _package_version("busybox-static")
    dropbear = _package_version("dropbear-bin")
    if busybox is None or dropbear is None:
        raise InfrastructureError("busybox-static and dropbear-bin are needed to build the "
                                  "reference guest", _APT_FIX)
    return _Versions(release, kernel_package, busybox, dropbear)


def _inputs_hash(v: _Versions) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(dataclasses.asdict(v), sort_keys=True).encode())
    h.update(CMDLINE.encode())
    sources = [(str(p.relative_to(SOURCE_DIR)), p) for p in sorted(SOURCE_DIR.rglob("*"))
               if p.is_file() and p.suffix != ".md"]  # documentation is not an input
    builders = [(f"harness/guests/{p.name}", p)
                for p in (Path(__file__), Path(__file__).with_name("cpio.py"))]
    for label, p in [*sources, *builders]:
        h.update(label.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


# -- build steps ------------------------------------------------------------------------------


def _kernel_deb(v: _Versions, debs: Path) -> Path:
    """The linux-image .deb matching the headers, kept in the cache.

    Taken from apt's archive cache when it holds that version, else `apt-get download`.
    """
    name = f"linux-image-{v.kernel_release}"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{name}_*.deb"))
    wanted = [d for d in found if _deb_version(d) == v.kernel_package]
    if wanted:
        return wanted[0]
    for archived in sorted(APT_ARCHIVES.glob(f"{name}_*.deb")):  # apt's own cache, if any
        if _deb_version(archived) == v.kernel_package:
            target = debs / archived.name
            shutil.copyfile(archived, target)
            return target
    with tempfile.TemporaryDirectory(dir=debs, prefix=".download-") as tmp:
        _run(["apt-get", "download", f"{name}={v.kernel_package}"],
             f"downloading {name} {v.kernel_package}",
             "check that apt can reach the Debian archive (apt-get update), then retry",
             cwd=Path(tmp))
        got = sorted(Path(tmp).glob(f"{name}_*.deb"))
        if not got:
            raise InfrastructureError(f"apt-get download {name} produced no .deb",
                                      "run apt-get update and retry")
        for stale in found:
            stale.unlink()
        target = debs / got[0].name
        got[0].replace(target)
        return target


def _deb_version(deb: Path) -> str:
    out = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip()


def _module_closure(modules_root: Path, wanted: tuple[str, ...]) -> list[Path]:
    """The .ko files for `wanted` and everything they depend on, dependencies first."""
    index = {p.name.removesuffix(".ko").replace("-", "_"): p for p in modules_root.rglob("*.ko")}
    ordered: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        key = name.replace("-", "_")
        if key in seen:
            return
        seen.add(key)
        if key not in index:
            raise InfrastructureError(f"kernel module {name} is not in the kernel package",
                                      "the guest kernel must build it as a module or in")
        ko = index[key]
        deps = _run(["modinfo", "-F", "depends", str(ko)], f"modinfo {ko.name}", _APT_FIX)
        for dep in filter(None, deps.strip().split(",")):
            visit(dep)
        ordered.append(ko)

    for name in wanted:
        visit(name)
    return ordered


def _build_module(release: str, work: Path, source: Path, ko_name: str) -> Path:
    """Compile a module in a temporary copy of its sources; return the .ko."""
    src = work / source.name
    shutil.copytree(source, src)
    _run(["make", "-s", f"KDIR=/usr/src/linux-headers-{release}"],
         f"building the {source.name} module", f"apt-get install {_HEADERS_META} gcc make",
         cwd=src)
    ko = src / ko_name
    if not ko.is_file():
        raise InfrastructureError(f"building the {source.name} module produced no {ko_name}",
                                  "read the make output above")
    return ko


def example_module(image: ReferenceImage) -> Path:
    """The example developer module of this build (vm/reference/example/), for
    `hotadd run --with-module`."""
    return image.build_dir / EXAMPLE_MODULE


def _make_keys(out: Path) -> tuple[Path, str, bytes, str]:
    """Generate dropbear's host key and the client key.

    Returns (dropbear host key file, host public key line, client private key PEM,
    client public key line).
    """
    host_key = out / "dropbear_host_key"
    _run(["dropbearkey", "-t", "ed25519", "-f", str(host_key)],
         "generating the guest's host key", _APT_FIX)
    pub = _run(["dropbearkey", "-y", "-f", str(host_key)], "reading the guest's host key",
               _APT_FIX)
    lines = [ln for ln in pub.splitlines() if ln.startswith("ssh-")]
    if not lines:
        raise InfrastructureError("dropbearkey -y printed no public key", _APT_FIX)
    host_line = " ".join(lines[0].split()[:2])
    client = Ed25519PrivateKey.generate()
    private = client.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.OpenSSH,
                                   serialization.NoEncryption())
    public = client.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                              serialization.PublicFormat.OpenSSH)
    return host_key, host_line, private, public.decode() + " hotadd-harness\n"


def _shared_libraries(binary: Path) -> list[Path]:
    """The shared libraries (and the loader) `binary` needs, as ldd resolves them."""
    out = _run(["ldd", str(binary)], f"ldd {binary}", "apt-get install libc-bin")
    libs: list[Path] = []
    for line in out.splitlines():
        m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if m:
            libs.append(Path(m.group(1)))
    return libs


_ETC_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
    "etc/group": "root:x:0:\n",
    "etc/shadow": "root:*:19000:0:99999:7:::\n",
    "etc/shells": "/bin/sh\n",
    "etc/nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files\n",
    "etc/hosts": "127.0.0.1 localhost\n10.0.2.15 hotadd-ref\n",
}


def _make_initramfs(target: Path, v: _Versions, modules: list[Path], probe_ko: Path,
                    host_key: Path, authorized_key: str) -> None:
    busybox = Path("/bin/busybox")
    dropbear = Path("/usr/sbin/dropbear")
    applets = _run([str(busybox), "--list"], "listing busybox applets", _APT_FIX).split()
    cpio = CpioWriter()
    for d in ("bin", "dev", "etc", "etc/dropbear", "etc/hotadd", "lib", "lib/hotadd",
              "lib/modules", "proc", "root", "run", "sys", "tmp", "usr", "var"):
        cpio.directory(d, 0o1777 if d == "tmp" else 0o700 if d == "root" else 0o755)
    for link, to in (("sbin", "bin"), ("usr/bin", "../bin"), ("usr/sbin", "../bin"),
                     ("lib64", "lib")):
        cpio.symlink(link, to)
    cpio.char_device("dev/console", 0o600, 5, 1)
    cpio.char_device("dev/null", 0o666, 1, 3)
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in applets:
        if applet != "busybox":
            cpio.symlink(f"bin/{applet}", "busybox")
    cpio.file("bin/dropbear", dropbear.read_bytes(), 0o755)
    for lib in _shared_libraries(dropbear):
        rel = lib.relative_to("/")
        if str(rel).startswith("lib64/"):
            rel = Path("lib") / rel.relative_to("lib64")
        cpio.parents_and_file(str(rel), lib.read_bytes(), 0o755)
    cpio.file("init", (SOURCE_DIR / "init").read_bytes(), 0o755)
    cpio.file("bin/hotadd-hotplug", (SOURCE_DIR / "hotadd-hotplug").read_bytes(), 0o755)
    for name, text in _ETC_FILES.items():
        cpio.file(name, text.encode(), 0o600 if name == "etc/shadow" else 0o644)
    cpio.file("etc/dropbear/host_key", host_key.read_bytes(), 0o600)
    cpio.directory("root/.ssh", 0o700)
    cpio.file("root/.ssh/authorized_keys", authorized_key.encode(), 0o600)
    for ko in modules:
        cpio.file(f"lib/modules/{ko.name}", ko.read_bytes(), 0o644)
    cpio.file("etc/hotadd/modules", "".join(f"{ko.name}\n" for ko in modules).encode(), 0o644)
    cpio.file(GUEST_PROBE_PATH.lstrip("/"), probe_ko.read_bytes(), 0o644)
    cpio.file("etc/hotadd/kernel-release", f"{v.kernel_release}\n".encode(), 0o644)
    target.write_bytes(cpio.finish())


@contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    """Serialize builds (setup.sh and a test run may race) with an advisory lock."""
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _prune(root: Path, keep: Path) -> None:
    """Drop old builds (other input hashes), keeping the most recent few and any used in the
    last day (another checkout on this host may be booting it right now)."""
    builds = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                     and (p / _IMAGE_FILE).is_file() and p != keep),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    recent = time.time() - _PRUNE_AFTER_S
    for old in builds[_KEEP_BUILDS - 1:]:
        if old.stat().st_mtime < recent:
            shutil.rmtree(old, ignore_errors=True)


def planned_boot_files() -> tuple[Path, Path]:
    """Kernel and initramfs of the build for the current inputs, built or not (--print-xml)."""
    final = paths.guests_dir() / "reference" / _inputs_hash(_versions())
    return final / "vmlinuz", final / "initrd.img"


def build(force: bool = False, progress: Progress | None = None) -> ReferenceImage:
    """Build the reference guest (or return the cached build for the same inputs)."""
    progress = progress or Progress(quiet=True)
    v = _versions()
    root = paths.guests_dir() / "reference"
    root.mkdir(parents=True, exist_ok=True)
    final = root / _inputs_hash(v)
    with _build_lock(root):
        if final.exists() and not force:
            try:
                image = _verified(final)
            except _Damaged as why:
                progress.say(f"guest build: the cached reference guest {final} is damaged "
                             f"({why}); rebuilding it")
                _remove_damaged(final)
            else:
                os.utime(final)  # mark it in use, so a build for other inputs won't prune it
                return image
        with progress.stage("guest build", f"reference guest for kernel {v.kernel_release}"):
            image = _build_into(root, final, v, progress)
        _prune(root, final)
        return image


class _Damaged(Exception):
    """Why a cached build cannot be used as it is."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_sums(build_dir: Path) -> None:
    (build_dir / _SUMS_FILE).write_text(
        "".join(f"{_sha256(build_dir / name)}  {name}\n" for name in _HASHED))


def _verified(build_dir: Path) -> ReferenceImage:
    """The cached build in `build_dir`, after checking every file against the hashes its build
    recorded; _Damaged says what is wrong (missing, truncated, altered, unreadable)."""
    try:
        lines = (build_dir / _SUMS_FILE).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise _Damaged(f"no readable {_SUMS_FILE}: an interrupted build or an older cache "
                       f"({exc})") from None
    sums: dict[str, str] = {}
    for line in lines:
        digest, _, name = line.partition("  ")
        sums[name] = digest
    for name in _HASHED:
        try:
            got = _sha256(build_dir / name)
        except OSError as exc:
            raise _Damaged(f"{name}: {exc.strerror or exc}") from None
        if sums.get(name) != got:
            raise _Damaged(f"{name} does not match the sha256 recorded when it was built "
                           "(truncated or altered)")
    try:
        return ReferenceImage.from_json((build_dir / _IMAGE_FILE).read_text())
    except (ValueError, KeyError, TypeError) as exc:
        raise _Damaged(f"{_IMAGE_FILE} is unreadable ({exc!r})") from None


def _remove_damaged(build_dir: Path) -> None:
    try:
        shutil.rmtree(build_dir)
    except OSError as exc:
        raise InfrastructureError(
            f"the damaged reference guest build {build_dir} cannot be removed: "
            f"{exc.strerror or exc}",
            f"remove it (rm -rf {build_dir}) and run 'hotadd guest build'") from None


def _build_into(root: Path, final: Path, v: _Versions, progress: Progress) -> ReferenceImage:
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".build-"))
    try:
        out = staging / "out"
        out.mkdir()
        work = staging / "work"
        work.mkdir()
        progress.say(f"guest build: kernel package linux-image-{v.kernel_release} "
                     f"{v.kernel_package}")
        deb = _kernel_deb(v, root / "debs")
        pkg = work / "pkg"
        _run(["dpkg-deb", "-x", str(deb), str(pkg)], f"extracting {deb.name}",
             "delete the cached .deb and retry (it may be truncated)")
        shutil.copyfile(pkg / "boot" / f"vmlinuz-{v.kernel_release}", out / "vmlinuz")
        modules = _module_closure(pkg / "lib" / "modules" / v.kernel_release, BOOT_MODULES)
        progress.say("guest build: probe module")
        probe_ko = _build_module(v.kernel_release, work, PROBE_SOURCE_DIR, "hotadd_probe.ko")
        shutil.copyfile(probe_ko, out / "hotadd_probe.ko")
        progress.say("guest build: example developer module")
        shutil.copyfile(_build_module(v.kernel_release, work, EXAMPLE_SOURCE_DIR, EXAMPLE_MODULE),
                        out / EXAMPLE_MODULE)
        host_key, host_line, private, authorized = _make_keys(work)
        key_path = out / "id_ed25519"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private)
        (out / "host_key.pub").write_text(host_line + "\n")
        progress.say("guest build: initramfs")
        _make_initramfs(out / "initrd.img", v, modules, probe_ko, host_key, authorized)
        shutil.rmtree(work)
        if final.exists():
            shutil.rmtree(final)
        out.rename(final)
        image = ReferenceImage(
            kernel=final / "vmlinuz",
            initrd=final / "initrd.img",
            cmdline=CMDLINE,
            private_key=final / "id_ed25519",
            host_key_line=host_line,
            kernel_version=v.kernel_release,
            build_dir=final,
        )
        (final / _IMAGE_FILE).write_text(image.to_json())
        _write_sums(final)  # last: a build without it is incomplete
        return image
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# -- guest-side operations --------------------------------------------------------------------


def connect(image: ReferenceImage, port: int, host: HostTarget = LOCAL) -> SshTransport:
    """An SSH transport to the guest through the libvirt host's 127.0.0.1:`port` forward
    (lazy; over the host's SSH when it is another machine: the guest's key stays here)."""
    return SshTransport("127.0.0.1", port, username=GUEST_USER, private_key=image.private_key,
                        host_key_line=image.host_key_line, dial=host.dialer(),
                        via=host.description if host.remote else "")


def load_probe(t: Transport, params: ProbeParams) -> None:
    """insmod the probe. A vetoed replay still loads (records say register_failed)."""
    if params.fault is not None:
        for key, value in FAULT_SYSCTLS[params.fault.fault].items():
            t.run(f"echo {value} > {key}").check()
    t.run(shlex.join(["insmod", GUEST_PROBE_PATH, *params.insmod_args()])).check()


def unload_probe(t: Transport) -> None:
    """rmmod the probe (it writes deregistered/unload first)."""
    t.run(shlex.join(["rmmod", GUEST_PROBE_NAME])).check()


def read_records(t: Transport) -> str:
    """The probe's records, JSON Lines. Readable while it is loaded."""
    return t.read_text(GUEST_RECORDS_PATH)


GUEST_CLOCK_PATH = "/proc/hotadd_probe/clock"
#: Answers each input line with the probe's clock; shell builtins only (no fork per answer).
_CLOCK_LOOP = f'while read -r _; do read -r t < {GUEST_CLOCK_PATH}; echo "$t"; done'


def probe_clock_samples(t: SshTransport, count: int) -> list[ClockSample]:
    """`count` round trips reading the loaded probe's clock (ns since load)."""
    samples = []
    for sent, reply, received in t.round_trips(_CLOCK_LOOP, count):
        if not reply.isdigit():
            raise TransportError(f"the probe's clock answered {reply!r}, not a number of ns",
                                 f"is the probe loaded? read {GUEST_CLOCK_PATH} in the guest")
        samples.append(ClockSample(sent, int(reply) / 1e9, received))
    return samples


_CONSOLE_RECORD = re.compile(r"hotadd-probe: (\{.*\})\s*$")


def console_record(line: str) -> str | None:
    """The record JSON of one console line, or None if the line is not a probe record."""
    m = _CONSOLE_RECORD.search(line)
    return m.group(1) if m else None


def records_from_console(text: str) -> str:
    """The probe's records (JSON Lines) of its last load, taken from a serial log or dmesg.

    The probe printk's every record, so this works after `rmmod` (when /proc/hotadd_probe is
    gone, and `deregistered`/`unload` exist only there) and after a guest crash.
    """
    lines = [m.group(1) for m in map(_CONSOLE_RECORD.search, text.splitlines()) if m]
    starts = [i for i, line in enumerate(lines) if '"event":"load"' in line]
    return "".join(f"{line}\n" for line in lines[starts[-1]:]) if starts else ""


# -- a developer's module beside the probe ------------------------------------------------------

#: Where a developer's module is copied in the guest (the initramfs is writable tmpfs).
GUEST_MODULE_DIR = "/lib/hotadd/extra"
#: A records writer other than the probe prints each record to the kernel log as
#: "hotadd-records[WRITER]: {json}" (WRITER: its module name), docs/record-format.md "Streams".
WRITER_RECORD_PREFIX = "hotadd-records[{writer}]: "
_ELF_MAGIC = b"\x7fELF"
_ET_REL = 1  # a kernel module is a relocatable ELF object
_MODULE_NAME = re.compile(r"[A-Za-z0-9_]{1,55}")  # MODULE_NAME_LEN 56, with the NUL


@dataclass(frozen=True)
class ModuleInfo:
    """What a .ko says about itself (modinfo, read on the host)."""

    name: str
    vermagic: str  # "6.1.0-56-amd64 SMP preempt mod_unload modversions"
    parameters: frozenset[str]


def module_info(path: Path) -> ModuleInfo:
    """The module's name, vermagic and parameters; InputError for a file that is not a Linux
    kernel module (missing, not ELF, not relocatable, no .modinfo)."""
    fix = "give a kernel module (.ko) built against the reference guest's kernel headers"
    try:
        with path.open("rb") as f:
            head = f.read(18)
    except OSError as exc:
        raise InputError(f"--with-module {path}: {exc.strerror or exc}", fix) from None
    if head[:4] != _ELF_MAGIC:
        raise InputError(f"--with-module {path} is not an ELF file (no kernel module)", fix)
    if len(head) < 18 or int.from_bytes(head[16:18], "little") != _ET_REL:
        raise InputError(f"--with-module {path} is an ELF file but not a relocatable object "
                         "(a .ko is one; this is an executable or shared library)", fix)
    fields: dict[str, list[str]] = {}
    for key in ("name", "vermagic", "parm"):
        proc = subprocess.run(["modinfo", "-F", key, str(path)], capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            raise InputError(f"--with-module {path}: modinfo cannot read it: "
                             f"{proc.stderr.strip()[-300:]}", fix)
        fields[key] = proc.stdout.splitlines()
    name = (fields["name"] or [path.name.removesuffix(".ko").replace("-", "_")])[0]
    if not fields["vermagic"]:
        raise InputError(f"--with-module {path} has no vermagic: not a kernel module", fix)
    return ModuleInfo(name=name, vermagic=fields["vermagic"][0],
                      parameters=frozenset(p.partition(":")[0] for p in fields["parm"]))


def check_module(path: Path, kernel_release: str,
                 params: Sequence[tuple[str, str]]) -> ModuleInfo:
    """`module_info`, refusing before any boot what insmod would refuse in the guest: another
    kernel's module, the probe's own name, a parameter the module does not declare."""
    info = module_info(path)
    if not _MODULE_NAME.fullmatch(info.name):
        raise InputError(f"--with-module {path}: module name {info.name!r} is not a Linux "
                         "module name", "rename the module (letters, digits, _)")
    if info.name == GUEST_PROBE_NAME:
        raise InputError(f"--with-module {path} is hotadd's own probe ({GUEST_PROBE_NAME})",
                         "give your own module; the probe is always loaded")
    if info.vermagic.split()[0] != kernel_release:
        raise InputError(
            f"--with-module {path} was built for kernel {info.vermagic.split()[0]}, the "
            f"reference guest runs {kernel_release}: insmod would refuse it",
            f"build it with make -C /usr/src/linux-headers-{kernel_release} M=$PWD modules")
    unknown = sorted({k for k, _ in params} - info.parameters)
    if unknown:
        known = ", ".join(sorted(info.parameters)) or "none"
        raise InputError(f"--with-module-param {', '.join(unknown)}: {info.name} declares no "
                         f"such parameter (it declares: {known})",
                         "check the name against modinfo -p")
    return info


def guest_module_path(name: str) -> str:
    return f"{GUEST_MODULE_DIR}/{name}.ko"


def insmod_argv(name: str, params: Sequence[tuple[str, str]]) -> list[str]:
    return ["insmod", guest_module_path(name), *(f"{k}={v}" for k, v in params)]


def module_loaded(t: Transport, name: str) -> bool:
    """Whether `name` is loaded and live (/sys/module/NAME/initstate says "live")."""
    res = t.run_argv(["cat", f"/sys/module/{name}/initstate"])
    return res.ok and res.stdout.strip() == "live"


def writer_records_from_console(text: str, writer: str) -> str:
    """The records `writer` printed to a serial log or dmesg (JSON Lines), from its last
    `load` record on (as `records_from_console` for the probe)."""
    prefix = re.escape(WRITER_RECORD_PREFIX.format(writer=writer))
    pattern = re.compile(prefix + r"(\{.*\})\s*$")
    lines = [m.group(1) for m in map(pattern.search, text.splitlines()) if m]
    starts = [i for i, line in enumerate(lines) if '"event":"load"' in line]
    return "".join(f"{line}\n" for line in lines[starts[-1]:]) if starts else ""


_OOPS_RIP = re.compile(r"RIP: [0-9a-f]{4}:(\S+?)\+0x[0-9a-f]+/0x[0-9a-f]+ \[(\w+)\]")
#: A reliable call-trace frame in a module (unreliable ones start with "? ").
_TRACE_FRAME = re.compile(r"^\s*(?:\[[ \d.]+\]\s*)?(\w+)\+0x[0-9a-f]+/0x[0-9a-f]+ \[(\w+)\]",
                          re.MULTILINE)


def faulting_module(excerpt: str) -> str | None:
    """The module an oops report blames, as "mod (fn)": the one its RIP line names ("RIP:
    0010:fn+0x1a/0x60 [mod]"), else, for a fault in the kernel proper called from a module
    (a memset, say), the first reliable call-trace frame in a module. None when neither."""
    m = _OOPS_RIP.search(excerpt) or _TRACE_FRAME.search(excerpt)
    return f"{m.group(2)} ({m.group(1)})" if m else None


def parse_cpu_list(text: str) -> frozenset[int]:
    """Parse the kernel's CPU list format ("0-1,3")."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            cpus.update(range(int(lo), int(hi or lo) + 1))
        except ValueError as exc:
            raise TransportError(f"unexpected CPU list from the guest: {text!r}",
                                 "check /sys/devices/system/cpu/online in the guest") from exc
    return frozenset(cpus)


def online_cpus(t: Transport) -> frozenset[int]:
    """The CPUs the guest has online (/sys/devices/system/cpu/online)."""
    return parse_cpu_list(t.read_text("/sys/devices/system/cpu/online"))

"""What the scenario needs from a guest OS, whatever it is.

A `GuestKind` knows how to prepare its image, describe its virtual hardware and open a session
once the domain runs; a `Session` loads and unloads the probe and reads what it wrote.
The reference guest and Windows implement both; the scenario sees nothing else.
"""

from __future__ import annotations

import abc
import contextlib
import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from harness.clock import ClockSample
from harness.errors import InputError, TransportError
from harness.host.domain import Accelerator, DomainSpec, Firmware, GuestOS, VcpuPlan
from harness.host.machine import Machine
from harness.host.target import LOCAL, HostTarget
from harness.oracle import Profile as OracleProfile
from harness.progress import Progress
from harness.transport.base import Transport

STATUS_INSUFFICIENT_RESOURCES = 0xC000009A


@contextlib.contextmanager
def blaming_the_guest(still_alive: Callable[[], None] | None) -> Iterator[None]:
    """When the transport fails, ask the machine first (`still_alive`, its check_alive): a
    crashed or wedged guest is then reported as such, with its bugcheck or console words, not
    as a lost connection."""
    try:
        yield
    except TransportError:
        if still_alive is not None:
            still_alive()
        raise


@dataclass(frozen=True)
class ProbeSettings:
    """How the probe registers and whether it vetoes, in guest-neutral terms."""

    add_existing: bool = True  # KE_PROCESSOR_CHANGE_ADD_EXISTING / replay of online CPUs
    veto_index: int | None = None  # processor index (NtNumber / Linux CPU id) whose Start fails
    veto_status: int = STATUS_INSUFFICIENT_RESOURCES  # NTSTATUS the veto reports


class DriverOrder(enum.Enum):
    """When a developer's driver loads relative to the probe (it unloads in reverse order)."""

    BEFORE = "before"  # the driver first: the probe's replay sees a guest the driver has seen
    AFTER = "after"  # the probe first (the default): the probe records the driver's load


@dataclass(frozen=True)
class DriverPackage:
    """A developer's driver to run beside the probe (`--with-module`, `--with-driver`).

    `name` is what the guest knows it by (the Linux module name, the Windows service name),
    filled in by the guest kind's `check_driver`, which also refuses a file it cannot load.
    It is also the driver's records writer: its records stream is named after it.
    """

    path: Path
    params: tuple[tuple[str, str], ...] = ()
    order: DriverOrder = DriverOrder.AFTER
    name: str = ""


@dataclass(frozen=True)
class DriverOption:
    """How a guest kind takes a developer's driver: `hotadd run --with-WORD PATH`, a file
    ending in `suffix` (`--with-WORD-param`, `--with-WORD-order`; pytest: `hotadd_driver`)."""

    word: str  # "module": --with-module
    suffix: str  # ".ko"

    @property
    def option(self) -> str:
        return f"--with-{self.word}"


@dataclass(frozen=True)
class GuestSettings:
    """A guest kind's own settings (`ScenarioSpec.guest_settings`; the reference guest has
    none). Each kind subclasses it (a frozen dataclass, `GuestKind.settings_type`); every
    field is the `hotadd run` option of the same name (`image` is `--image`), and shows in
    result.json's "scenario" under its name."""


def _no_drivers(session: object) -> InputError:
    return InputError(f"{type(session).__name__} cannot load a developer's driver",
                      "use --with-module on the reference guest or --with-driver on Windows")


@dataclass(frozen=True)
class GuestFacts:
    """What the guest OS says about itself before the probe loads; result.json's "guest"."""

    os: str
    build: int | None = None
    #: virtualization-based security: "off", "enabled, not running", "running"; None where
    #: the guest has no such thing or could not tell
    vbs: str | None = None
    dynamic_processors: bool | None = None  # the OS reports support for hot-added CPUs


@dataclass(frozen=True)
class HardwareRequest:
    """The run's hardware choices that every guest kind honours."""

    name: str
    vcpus: VcpuPlan
    accelerator: Accelerator
    run_dir: Path
    scratch: Path
    memory_mib: int | None = None  # None: the guest kind's default
    firmware: Firmware | None = None  # None: the guest kind's default
    host: HostTarget = LOCAL  # where `scratch` is and QEMU runs (harness.host.target)


class Session(abc.ABC):
    """A running guest reached through a transport."""

    transport: Transport

    @abc.abstractmethod
    def load_probe(self, settings: ProbeSettings) -> None:
        """Load the probe; it registers (and replays) before this returns."""

    @abc.abstractmethod
    def unload_probe(self) -> None:
        """Deregister and unload the probe."""

    @abc.abstractmethod
    def live_records(self) -> str:
        """The records written so far, while the probe is loaded (JSON Lines)."""

    @abc.abstractmethod
    def final_records(self) -> str:
        """Every record of the last probe load, after it was unloaded (JSON Lines)."""

    @abc.abstractmethod
    def processor_count(self) -> int:
        """Processors the guest OS has online, read from a fresh process."""

    # A developer's driver beside the probe (a guest that has none refuses).

    def install_driver(self, driver: DriverPackage) -> None:
        """Copy the driver's files into the guest and register it, without starting it."""
        raise _no_drivers(self)

    def start_driver(self, driver: DriverPackage) -> None:
        """Load (start) the installed driver with its parameters."""
        raise _no_drivers(self)

    def stop_driver(self, driver: DriverPackage) -> None:
        """Unload (stop) the driver."""
        raise _no_drivers(self)

    def driver_running(self, driver: DriverPackage) -> bool:
        """Whether the driver is still loaded: false once it vanished (unloaded itself, its
        service stopped)."""
        raise _no_drivers(self)

    def driver_records(self, driver: DriverPackage) -> str:
        """The records the driver wrote (its own stream, JSON Lines), last load; empty when
        it writes none."""
        raise _no_drivers(self)

    def clock_samples(self, count: int) -> list[ClockSample]:
        """Up to `count` round trips reading the loaded probe's clock (`harness.clock`). A
        guest whose every command is costly may give fewer (Windows: one handshake inside one
        probe call). None by default: the load round trip is then all the mapping has."""
        return []

    def sync_clock(self) -> None:
        """Set the guest's wall clock to the host's. A guest restored from a saved state wakes
        with the clock of the moment it was saved. Guests that cannot are left alone."""
        return None

    def facts(self) -> GuestFacts | None:
        """The guest's own description for the result; None if it has nothing to add."""
        return None

    def close(self) -> None:
        self.transport.close()


class GuestKind(abc.ABC):
    """One guest OS: image, hardware flavour, readiness, and how to talk to it.

    What the class declares is all a scenario, the CLI and a matrix ask of a guest before one
    exists; `harness.guests.registry` finds the class by `name`."""

    name: ClassVar[str]  # its `--guest` name, the key of `harness.guests.registry.KINDS`
    os: ClassVar[GuestOS]  # the hardware flavour of its domain (`harness.host.domain`)
    oracle_profile: ClassVar[OracleProfile]  # the rule set its probe's records are judged by
    settings_type: ClassVar[type[GuestSettings]] = GuestSettings  # its own options
    origin: ClassVar[str]  # where its image comes from: "the NAME guest {origin}"
    own_driver: ClassVar[DriverOption]  # the file a developer's driver is for it
    transport: ClassVar[type[Transport]]  # what its sessions speak
    default_memory_mib: int  # when the run gives none (a matrix gates host memory by it)

    @classmethod
    def from_settings(cls, settings: GuestSettings) -> GuestKind:
        """The kind for a run with these settings (of `settings_type`, checked)."""
        return cls()

    @classmethod
    def check_probe(cls, probe: ProbeSettings) -> None:
        """Refuse, before any boot, probe settings this guest's probe cannot honour."""
        return None

    @classmethod
    def check_driver_file(cls, driver: DriverPackage) -> None:
        """Refuse, before anything is built, a developer's driver file (of `own_driver`'s
        suffix, existing) this guest cannot load, or parameters it cannot pass;
        `check_driver` then checks the rest against the prepared image."""
        return None

    @abc.abstractmethod
    def prepare(self, progress: Progress) -> None:
        """Build or locate the image (cached); raise InputError if it cannot exist here."""

    @abc.abstractmethod
    def domain_spec(self, hw: HardwareRequest) -> DomainSpec:
        """The domain for this guest, with the run's hardware choices applied."""

    def planned_spec(self, hw: HardwareRequest) -> DomainSpec:
        """The domain `domain_spec` would give, built from names alone (`--print-xml`):
        nothing is built, created or read that may not exist yet; `planned` is set."""
        raise InputError(f"the {self.name} guest cannot print its domain XML without "
                         "preparing", "run without --print-xml")

    @abc.abstractmethod
    def open_session(self, machine: Machine, progress: Progress,
                     timeout: float) -> Session:
        """Wait until the guest is reachable and return a session; GuestNotReady otherwise."""

    def warm_inputs(self) -> tuple[Path, ...]:
        """Files beyond the domain's own inputs whose content shapes the guest's state at
        "ready" (hashed into its saved-guest key, `harness.warm`)."""
        return ()

    def console_record(self, line: str) -> str | None:
        """The record (one JSON line) a console line carries as the probe wrote it, or None:
        how records are pushed while the run goes on (`harness.live`)."""
        return None

    def console_records(self, serial_text: str) -> str:
        """The last probe load's records from the serial console (JSON Lines), for when the
        transport is gone (a crash). Empty for guests whose probe does not print there."""
        return ""

    def check_driver(self, driver: DriverPackage) -> DriverPackage:
        """`driver` with its guest-side `name`, after checking (once prepared, before any
        boot) that this guest can load it; InputError naming the problem otherwise."""
        raise InputError(f"the {self.name} guest cannot load a developer's driver",
                         "use --with-module on the reference guest or --with-driver on Windows")

    def console_driver_records(self, serial_text: str, driver: DriverPackage) -> str:
        """The driver's records (its last load) from the serial console, for after a crash."""
        return ""

    def faulting_module(self, excerpt: str) -> str | None:
        """The module a crash report blames (Windows: the bugcheck's faulting module; Linux:
        the oops's RIP), or None when the report names none."""
        return None

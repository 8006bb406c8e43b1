"""What the scenario needs from a guest OS, whatever it is.

A `GuestKind` knows how to prepare its image, describe its virtual hardware and open a session
once the domain runs; a `Session` loads and unloads the probe and reads what it wrote.
The reference guest and Windows implement both; the scenario sees nothing else.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.clock import ClockSample
from harness.errors import InputError, TransportError
from harness.host.domain import Accelerator, DomainSpec, Firmware, GuestOS, VcpuPlan
from harness.host.machine import Machine
from harness.host.target import LOCAL, HostTarget
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
    """One guest OS: image, hardware flavour, readiness, and how to talk to it."""

    os: GuestOS  # which guest this kind runs (the scenario maps it to an oracle profile)
    default_memory_mib: int  # when the run gives none (a matrix gates host memory by it)

    @abc.abstractmethod
    def prepare(self, progress: Progress) -> None:
        """Build or locate the image (cached); raise InputError if it cannot exist here."""

    @abc.abstractmethod
    def domain_spec(self, hw: HardwareRequest) -> DomainSpec:
        """The domain for this guest, with the run's hardware choices applied."""

    def planned_spec(self, hw: HardwareRequest) -> DomainSpec:
        """The domain `domain_spec` would give, built from names alone (`--print-xml`):
        nothing is built, created or read that may not exist yet; `planned` is set."""
        raise InputError(f"the {self.os.value} guest cannot print its domain XML without "
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

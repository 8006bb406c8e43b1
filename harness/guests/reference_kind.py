"""The reference guest as a `GuestKind`: the Linux probe behind the scenario's interface."""

from __future__ import annotations

import errno
import re
import time

from harness.clock import ClockSample
from harness.errors import InputError
from harness.guests import reference
from harness.guests.base import GuestKind, GuestSession, HardwareRequest, ProbeSettings
from harness.host.domain import DirectBoot, DomainSpec, Firmware, Forward, Profile
from harness.host.machine import Machine, free_port
from harness.oracle import Profile as OracleProfile
from harness.progress import Progress
from harness.transport.base import Transport
from harness.transport.ssh import SshTransport


def probe_params(settings: ProbeSettings) -> reference.ProbeParams:
    """The module parameters for `settings`: the veto NTSTATUS back to the errno the probe
    reports as that status."""
    err = reference.errno_for_ntstatus(settings.veto_status)
    if settings.veto_index is not None and err is None:
        known = ", ".join(sorted({f"0x{s:08X}" for s in reference.NTSTATUS_BY_ERRNO.values()}))
        raise InputError(
            f"the reference guest cannot veto with status 0x{settings.veto_status:08X}",
            f"use one of {known}")
    return reference.ProbeParams(flags=1 if settings.add_existing else 0,
                                 veto_cpu=settings.veto_index, veto_errno=err or errno.ENOMEM)


class ReferenceSession(GuestSession):
    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def load_probe(self, settings: ProbeSettings) -> None:
        reference.load_probe(self.transport, probe_params(settings))

    def unload_probe(self) -> None:
        reference.unload_probe(self.transport)

    def live_records(self) -> str:
        return reference.read_records(self.transport)

    def final_records(self) -> str:
        """From the kernel log: the probe prints every record there too, and /proc is gone."""
        return reference.records_from_console(self.transport.run("dmesg").check().stdout)

    def processor_count(self) -> int:
        return len(reference.online_cpus(self.transport))

    def clock_samples(self, count: int) -> list[ClockSample]:
        if not isinstance(self.transport, SshTransport):
            return []
        return reference.probe_clock_samples(self.transport, count)

    def sync_clock(self) -> None:
        """busybox `date -s @SECONDS`: whole seconds, which is all the guest's wall clock is
        used for (the timeline maps the probe's own clock, see `Attempt.load`)."""
        self.transport.run(f"date -u -s @{round(time.time())} >/dev/null").check()


class ReferenceGuest(GuestKind):
    name = "reference"
    oracle_profile = OracleProfile.LINUX

    def __init__(self) -> None:
        self._image: reference.ReferenceImage | None = None

    @property
    def image(self) -> reference.ReferenceImage:
        if self._image is None:
            raise InputError("the reference guest was not prepared", "call prepare() first")
        return self._image

    def prepare(self, progress: Progress) -> None:
        self._image = reference.build(progress=progress)

    def domain_spec(self, hw: HardwareRequest) -> DomainSpec:
        if hw.firmware is Firmware.UEFI:
            raise InputError("the reference guest boots its kernel directly, without firmware",
                             "use --firmware bios (the default) with --guest reference")
        img = self.image
        return DomainSpec(
            name=hw.name, vcpus=hw.vcpus, profile=Profile.LINUX,
            serial_log=hw.run_dir / "serial.log", memory_mib=hw.memory_mib or 512,
            accelerator=hw.accelerator,
            direct_boot=DirectBoot(img.kernel, img.initrd, img.cmdline),
            forwards=(Forward(guest_port=22, host_port=free_port()),),
        )

    def console_record(self, line: str) -> str | None:
        return reference.console_record(line)

    def console_records(self, serial_text: str) -> str:
        return reference.records_from_console(serial_text)

    def open_session(self, machine: Machine, progress: Progress,
                     timeout: float) -> GuestSession:
        t0 = time.monotonic()
        machine.wait_serial(re.escape(reference.READY_MARKER), timeout,
                            tick=lambda: progress.waiting("boot", "the guest's ready marker", t0))
        transport = reference.connect(self.image, machine.forwarded_port(22))
        remaining = max(5.0, timeout - (time.monotonic() - t0))
        transport.wait_ready(
            remaining, still_alive=machine.check_alive,
            on_wait=lambda _err: progress.waiting("ssh", transport.description, t0),
            hint=f"read the serial log {machine.spec.serial_log}")
        return ReferenceSession(transport)

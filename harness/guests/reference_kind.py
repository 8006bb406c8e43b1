"""The reference guest as a `GuestKind`: the Linux probe behind the scenario's interface."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import re
import time
from collections.abc import Callable

from harness.clock import ClockSample
from harness.errors import InputError
from harness.guests import reference
from harness.guests.base import (
    DriverOption,
    DriverPackage,
    GuestKind,
    HardwareRequest,
    ProbeSettings,
    Session,
    blaming_the_guest,
)
from harness.host.domain import DirectBoot, DomainSpec, Firmware, Forward, GuestOS
from harness.host.machine import Machine
from harness.oracle import Profile as OracleProfile
from harness.progress import Progress
from harness.transport.base import Transport
from harness.transport.ssh import SshTransport

#: Linux splits module parameters at spaces and treats quotes specially (kernel/params.c,
#: next_arg()); a value holding them would not arrive as given.
_LINUX_PARAM_VALUE = re.compile(r"[^\s\"']*")


def probe_params(settings: ProbeSettings,
                 fault: reference.FaultInjection | None = None) -> reference.ProbeParams:
    """The module parameters for `settings` (and an injected fault, for health-watch tests):
    the veto NTSTATUS back to the errno the probe reports as that status."""
    err = reference.errno_for_ntstatus(settings.veto_status)
    if settings.veto_index is not None and err is None:
        known = ", ".join(sorted({f"0x{s:08X}" for s in reference.NTSTATUS_BY_ERRNO.values()}))
        raise InputError(
            f"the reference guest cannot veto with status 0x{settings.veto_status:08X}",
            f"use one of {known}")
    return reference.ProbeParams(flags=1 if settings.add_existing else 0,
                                 veto_cpu=settings.veto_index, veto_errno=err or errno.ENOMEM,
                                 fault=fault)


class ReferenceSession(Session):
    """The probe module over SSH. `still_alive` (the machine's check) is consulted when the
    guest stops answering, so a crashed or wedged guest is reported as such (with the console's
    words), not as a lost connection."""

    def __init__(self, transport: Transport, fault: reference.FaultInjection | None = None,
                 still_alive: Callable[[], None] | None = None) -> None:
        self.transport = transport
        self.fault = fault
        self.still_alive = still_alive

    def _guest(self) -> contextlib.AbstractContextManager[None]:
        return blaming_the_guest(self.still_alive)

    def load_probe(self, settings: ProbeSettings) -> None:
        with self._guest():
            reference.load_probe(self.transport, probe_params(settings, self.fault))

    def unload_probe(self) -> None:
        with self._guest():
            reference.unload_probe(self.transport)

    def live_records(self) -> str:
        with self._guest():
            return reference.read_records(self.transport)

    def final_records(self) -> str:
        """From the kernel log: the probe prints every record there too, and /proc is gone."""
        with self._guest():
            return reference.records_from_console(self.transport.run("dmesg").check().stdout)

    def processor_count(self) -> int:
        with self._guest():
            return len(reference.online_cpus(self.transport))

    def install_driver(self, driver: DriverPackage) -> None:
        with self._guest():
            self.transport.put(driver.path, reference.guest_module_path(driver.name))

    def start_driver(self, driver: DriverPackage) -> None:
        with self._guest():
            self.transport.run_argv(reference.insmod_argv(driver.name, driver.params)).check()

    def stop_driver(self, driver: DriverPackage) -> None:
        with self._guest():
            self.transport.run_argv(["rmmod", driver.name]).check()

    def driver_running(self, driver: DriverPackage) -> bool:
        with self._guest():
            return reference.module_loaded(self.transport, driver.name)

    def driver_records(self, driver: DriverPackage) -> str:
        with self._guest():
            return reference.writer_records_from_console(
                self.transport.run("dmesg").check().stdout, driver.name)

    def clock_samples(self, count: int) -> list[ClockSample]:
        if not isinstance(self.transport, SshTransport):
            return []
        return reference.probe_clock_samples(self.transport, count)

    def sync_clock(self) -> None:
        """busybox `date -s @SECONDS`: whole seconds, which is all the guest's wall clock is
        used for (the timeline maps the probe's own clock, see `Attempt.load`)."""
        self.transport.run(f"date -u -s @{round(time.time())} >/dev/null").check()


class ReferenceKind(GuestKind):
    name = "reference"
    os = GuestOS.REFERENCE
    oracle_profile = OracleProfile.LINUX  # its probe speaks for Linux's hotplug notifications
    origin = "is built by hotadd"
    own_driver = DriverOption("module", ".ko")
    transport = SshTransport
    default_memory_mib = 512

    def __init__(self, fault: reference.FaultInjection | None = None) -> None:
        self._image: reference.ReferenceImage | None = None
        self.fault = fault  # a fault the probe injects (health-watch tests only)

    @property
    def image(self) -> reference.ReferenceImage:
        if self._image is None:
            raise InputError("the reference guest was not prepared", "call prepare() first")
        return self._image

    @classmethod
    def check_probe(cls, probe: ProbeSettings) -> None:
        probe_params(probe)  # the statuses the Linux probe can report

    @classmethod
    def check_driver_file(cls, driver: DriverPackage) -> None:
        bad = [f"{k}={v}" for k, v in driver.params if not _LINUX_PARAM_VALUE.fullmatch(v)]
        if bad:
            raise InputError(f"--with-module-param {bad[0]!r}: a module parameter value "
                             "cannot hold spaces or quotes", "pass a value without them")
        reference.module_info(driver.path)  # an ELF relocatable object with a .modinfo

    def prepare(self, progress: Progress) -> None:
        self._image = reference.build(progress=progress)

    def domain_spec(self, hw: HardwareRequest) -> DomainSpec:
        img = self.image
        return self._spec(hw, DirectBoot(img.kernel, img.initrd,
                                         reference.kernel_cmdline(img.cmdline, hw.vcpus.maximum)))

    def planned_spec(self, hw: HardwareRequest) -> DomainSpec:
        kernel, initrd = reference.planned_boot_files()
        cmdline = reference.kernel_cmdline(reference.CMDLINE, hw.vcpus.maximum)
        return self._spec(hw, DirectBoot(kernel, initrd, cmdline), planned=True)

    def _spec(self, hw: HardwareRequest, boot: DirectBoot, planned: bool = False) -> DomainSpec:
        if hw.firmware is Firmware.UEFI:
            raise InputError("the reference guest boots its kernel directly, without firmware",
                             "use --firmware bios (the default) with --guest reference")
        return DomainSpec(
            name=hw.name, vcpus=hw.vcpus, guest_os=GuestOS.REFERENCE,
            serial_log=hw.run_dir / "serial.log",
            memory_mib=hw.memory_mib or self.default_memory_mib,
            accelerator=hw.accelerator, direct_boot=boot,
            forwards=(Forward(guest_port=22),), planned=planned,
        )

    def console_record(self, line: str) -> str | None:
        return reference.console_record(line)

    def console_records(self, serial_text: str) -> str:
        return reference.records_from_console(serial_text)

    def check_driver(self, driver: DriverPackage) -> DriverPackage:
        info = reference.check_module(driver.path, self.image.kernel_version, driver.params)
        return dataclasses.replace(driver, name=info.name)

    def console_driver_records(self, serial_text: str, driver: DriverPackage) -> str:
        return reference.writer_records_from_console(serial_text, driver.name)

    def faulting_module(self, excerpt: str) -> str | None:
        return reference.faulting_module(excerpt)

    def open_session(self, machine: Machine, progress: Progress,
                     timeout: float) -> Session:
        t0 = time.monotonic()
        machine.watch_console(reference.CONSOLE_ALARMS)
        machine.wait_serial(re.escape(reference.READY_MARKER), timeout,
                            tick=lambda: progress.waiting("boot", "the guest's ready marker", t0))
        transport = reference.connect(self.image, machine.forwarded_port(22), machine.host)
        remaining = max(5.0, timeout - (time.monotonic() - t0))
        transport.wait_ready(
            remaining, still_alive=machine.check_alive,
            on_wait=lambda _err: progress.waiting("ssh", transport.description, t0),
            hint=f"read the serial log {machine.spec.serial_log}")
        transport.liveness = machine.check_alive
        machine.on_sick(transport.abort)  # a command blocked on a dead guest ends at once
        return ReferenceSession(transport, self.fault, still_alive=machine.check_alive)

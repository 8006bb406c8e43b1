"""The error hierarchy and the exit codes it maps to.

Only the CLI turns these into a process exit (see `harness.cli`). Infrastructure errors mean
"the harness could not produce a trustworthy verdict" (exit 2); a verdict of fail is not an
exception at all, it is a result (exit 1). A nightly job must be able to tell the two apart.
Every message names the problem *and* the fix, because the reader is usually a person looking
at a CI log.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    PASS = 0
    VERDICT_FAIL = 1
    HARNESS_ERROR = 2


class HotaddError(Exception):
    """Root of every error the harness raises on purpose. `stage` is the run stage it ended
    (set by `harness.progress.Progress.stage`, e.g. "add 2, waiting for ACPI _OST")."""

    stage: str | None = None

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}\n  fix: {fix}" if fix else problem)


class InputError(HotaddError):
    """Bad user input: an impossible spec, an unreadable record file, a missing image."""


class InfrastructureError(HotaddError):
    """The machinery failed: libvirt, QEMU, the transport, the guest."""


class LibvirtUnreachable(InfrastructureError):
    """libvirt could not be opened at the given URI."""


class DomainError(InfrastructureError):
    """libvirt or QEMU refused an operation on a domain."""


class NoFreeVcpuSlot(DomainError):
    """Every hot-pluggable vCPU is already online."""


class GuestNotReady(InfrastructureError):
    """The guest never became reachable; the message names the serial log to read."""


class GuestUnhealthy(InfrastructureError):
    """The guest is crashed or wedged; `excerpt` is what its console said about it (the
    message carries it too, so the CI log and result.json show it)."""

    def __init__(self, problem: str, fix: str | None = None,
                 excerpt: str | None = None) -> None:
        self.excerpt = excerpt
        super().__init__(problem, fix)
        if excerpt:
            self.args = (self.args[0] + "\n  console:\n" + "\n".join(
                f"    {line}" for line in excerpt.splitlines()),)


class GuestCrashed(GuestUnhealthy):
    """The guest panicked / bugchecked / oopsed during the run (a verdict failure, exit 1)."""

    def __init__(self, problem: str, fix: str | None = None,
                 bugcheck: tuple[int, ...] | None = None, excerpt: str | None = None) -> None:
        self.bugcheck = bugcheck
        super().__init__(problem, fix, excerpt)


class GuestWedged(GuestUnhealthy):
    """The guest stopped making progress (soft lockup, RCU stall, hung task, a transport that
    no longer answers): no verdict is possible, exit 2."""


class TransportError(InfrastructureError):
    """A command could not be delivered to, or its result collected from, the guest."""


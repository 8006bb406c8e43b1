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


class Outcome(enum.Enum):
    """What a run or a command concluded (`result.json`'s "outcome")."""

    PASS = "pass"
    FAIL = "fail"  # the guest under test misbehaved: the verdict failed, or it crashed
    ERROR = "error"  # the harness or the lab could not produce a verdict
    INTERRUPTED = "interrupted"  # Ctrl-C, SIGTERM or SIGHUP: no verdict


_EXIT_CODES = {
    Outcome.PASS: ExitCode.PASS,
    Outcome.FAIL: ExitCode.VERDICT_FAIL,
    Outcome.ERROR: ExitCode.HARNESS_ERROR,
    Outcome.INTERRUPTED: ExitCode.HARNESS_ERROR,
}


class HotaddError(Exception):
    """Root of every error the harness raises on purpose. `stage` is the run stage it ended
    (set by `harness.progress.Progress.stage`, e.g. "add 2, waiting for ACPI _OST")."""

    stage: str | None = None

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}\n  fix: {fix}" if fix else problem)

    @property
    def message(self) -> str:
        """Problem, fix and the notes added on the way up (where it happened, what to read)."""
        return "\n  ".join([str(self), *getattr(self, "__notes__", ())])


class InputError(HotaddError):
    """Bad user input: an impossible spec, an unreadable record file, a missing image."""


class InfrastructureError(HotaddError):
    """The machinery failed: libvirt, QEMU, the transport, the guest."""


class LibvirtUnreachable(InfrastructureError):
    """libvirt could not be opened at the given URI."""


class HostUnreachable(InfrastructureError):
    """A remote libvirt host's SSH login failed (no connection, refused, wrong host key)."""


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
    """The guest panicked / bugchecked / oopsed.

    `under_test` is true once the probe (the driver under test) began to load: from then on a
    crash may be the driver's doing and is a verdict (exit 1); before, it is the lab's (exit 2).
    """

    def __init__(self, problem: str, fix: str | None = None,
                 bugcheck: tuple[int, ...] | None = None, excerpt: str | None = None,
                 under_test: bool = False) -> None:
        self.bugcheck = bugcheck
        self.under_test = under_test
        super().__init__(problem, fix, excerpt)


class GuestWedged(GuestUnhealthy):
    """The guest stopped making progress (soft lockup, RCU stall, hung task, a transport that
    no longer answers): no verdict is possible, exit 2."""


class QemuFrozen(GuestWedged):
    """QEMU itself stopped answering (its process stopped by SIGSTOP or a debugger, or its
    monitor silent past a call's deadline): whatever the guest did meanwhile is no verdict,
    exit 2."""


class TransportError(InfrastructureError):
    """A command could not be delivered to, or its result collected from, the guest."""



def outcome_of(exc: BaseException) -> Outcome:
    """What an exception that ended a run or a command means for its outcome."""
    if isinstance(exc, GuestCrashed) and exc.under_test:
        return Outcome.FAIL
    if isinstance(exc, KeyboardInterrupt):
        return Outcome.INTERRUPTED
    return Outcome.ERROR  # HotaddError, and a bug in hotadd is no verdict either


def exit_code(what: Outcome | BaseException) -> ExitCode:
    """The one mapping from an outcome, or the exception that ended a command, to the process's
    exit code: 0 pass, 1 the guest under test misbehaved, 2 no verdict."""
    return _EXIT_CODES[what if isinstance(what, Outcome) else outcome_of(what)]

"""The one interface every guest transport implements.

Modelled on pytest-testinfra's backends: `run()` returns a result dataclass, quoting and
encoding live here once, connections are opened lazily, reused for every command, re-opened
once if they died, and closed by `close()` (transports are context managers). Retrying while a
guest boots lives in `wait_ready()`, nowhere else.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from harness.errors import GuestNotReady, InputError, TransportError


@dataclass(frozen=True)
class CommandResult:
    """What one command did in the guest."""

    command: str  # as shown to people: already redacted by the transport
    rc: int
    stdout: str
    stderr: str
    elapsed: float

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def check(self) -> CommandResult:
        """Return self, or raise TransportError quoting the command, rc and stderr."""
        if self.rc != 0:
            raise TransportError(
                f"guest command failed (rc={self.rc}): {self.command}\n"
                f"  stderr: {self.stderr.strip()[-2000:]}",
                "read the guest's stderr above; the run directory holds the full logs",
            )
        return self


class Transport(abc.ABC):
    """A way to run commands in a guest and move files into and out of it."""

    #: Shown in progress and error messages, e.g. "ssh root@127.0.0.1:40022".
    description: str = "transport"
    #: Called about once a second while a command waits for the guest; it raises (e.g.
    #: GuestWedged from the machine's console watch) when waiting longer is pointless, so a
    #: sick guest ends the command in seconds instead of at its timeout.
    liveness: Callable[[], None] | None = None

    @abc.abstractmethod
    def run(self, command: str, timeout: float = 120.0) -> CommandResult:
        """Run one command in the guest's default shell and wait for it."""

    @abc.abstractmethod
    def argv_line(self, argv: Sequence[str]) -> str:
        """The command line of the guest's default shell that runs `argv[0]` with exactly the
        arguments `argv[1:]` (each quoted so that the shell interprets none of it); InputError
        for an argument this shell cannot pass intact."""

    def run_argv(self, argv: Sequence[str], timeout: float = 120.0) -> CommandResult:
        """Run one program with exactly these arguments (a developer's file names and module
        parameters are data, never shell text)."""
        if not argv:
            raise InputError("an empty argument vector names no program",
                             "give the program as the first element")
        return self.run(self.argv_line(argv), timeout)

    @abc.abstractmethod
    def put(self, local_path: Path, remote_path: str, timeout: float = 120.0) -> None:
        """Copy a host file into the guest at `remote_path` (replaced whole: a reader never
        sees a partial file where a complete one was expected)."""

    @abc.abstractmethod
    def run_script(self, script: str, timeout: float = 300.0) -> CommandResult:
        """Run a script of any length (sent as a file, never squeezed onto a command line)."""

    @abc.abstractmethod
    def fetch(self, remote_path: str, local_path: Path) -> None:
        """Copy a file out of the guest."""

    @abc.abstractmethod
    def probe(self) -> None:
        """One cheap round trip; raise TransportError if the guest cannot be reached now."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection; safe to call twice."""

    def read_text(self, remote_path: str) -> str:
        """The content of a guest file as text (transports may override with something faster)."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="hotadd-fetch-") as tmp:
            local = Path(tmp) / "file"
            self.fetch(remote_path, local)
            return local.read_text(encoding="utf-8", errors="replace")

    def wait_ready(
        self,
        timeout: float,
        *,
        on_wait: Callable[[str], None] | None = None,
        still_alive: Callable[[], None] | None = None,
        hint: str = "",
    ) -> float:
        """Poll `probe()` with backoff until it succeeds; return the seconds it took.

        `on_wait` receives the last error for progress output; `still_alive` is called each
        round and should raise (e.g. GuestCrashed) when waiting is pointless. `hint` is added
        to the GuestNotReady message (typically "read the serial log at PATH").
        """
        t0 = time.monotonic()
        delay = 0.25
        last = "no attempt yet"
        while True:
            if still_alive is not None:
                still_alive()
            try:
                self.probe()
                return time.monotonic() - t0
            except TransportError as exc:
                last = exc.problem
            if on_wait is not None:
                on_wait(last)
            if time.monotonic() - t0 > timeout:
                raise GuestNotReady(
                    f"{self.description}: guest not reachable after {timeout:.0f}s "
                    f"(last error: {last})",
                    hint or "check that the guest booted and its service is listening",
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 3.0)

    def __enter__(self) -> Transport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

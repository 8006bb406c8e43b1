"""Progress for long operations: which stage, how long so far, what is being awaited.

Written to stderr so stdout stays machine-readable (`--json`). Nothing here ever sees a
secret: callers pass stage names and descriptions, never command lines.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO


@dataclass
class Progress:
    """Stage timer and reporter. `quiet` silences output but keeps the timings."""

    stream: TextIO = field(default_factory=lambda: sys.stderr)
    quiet: bool = False
    started: float = field(default_factory=time.monotonic)
    timings: dict[str, float] = field(default_factory=dict)
    wait_interval: float = 5.0  # seconds between "still waiting" lines for one stage
    _last_wait: dict[str, float] = field(default_factory=dict)
    interrupted_in: str | None = None  # the innermost stage a Ctrl-C/SIGTERM cut short

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, message: str) -> None:
        if not self.quiet:
            print(f"[{self.elapsed():7.1f}s] {message}", file=self.stream, flush=True)

    def waiting(self, stage: str, awaited: str, since: float) -> None:
        """Report that `stage` is still waiting for `awaited`; call it from poll loops freely,
        it prints at most once per `wait_interval` per stage."""
        now = time.monotonic()
        if now - self._last_wait.get(stage, since) < self.wait_interval:
            return
        self._last_wait[stage] = now
        self.say(f"{stage}: waiting for {awaited} ({time.monotonic() - since:.1f}s)")

    @contextmanager
    def stage(self, name: str, awaited: str = "") -> Iterator[None]:
        """Time a stage and record it in `timings` under `name`, even when it fails."""
        t0 = time.monotonic()
        try:  # the announcement too: a signal sent on seeing it must land in this stage
            self.say(f"{name}: {awaited}..." if awaited else f"{name}...")
            yield
        except KeyboardInterrupt:
            self.timings[name] = time.monotonic() - t0
            self.interrupted_in = self.interrupted_in or name
            self.say(f"{name}: interrupted after {self.timings[name]:.2f}s")
            raise
        except BaseException:
            self.timings[name] = time.monotonic() - t0
            self.say(f"{name}: failed after {self.timings[name]:.2f}s")
            raise
        self.timings[name] = time.monotonic() - t0
        self.say(f"{name}: done in {self.timings[name]:.2f}s")


def throttled(fn: Callable[[str], None], period: float = 30.0) -> Callable[[str], None]:
    """`fn`, called at most once per `period` seconds (progress while waiting for an hour)."""
    last = [-period]

    def call(arg: str) -> None:
        now = time.monotonic()
        if now - last[0] >= period:
            last[0] = now
            fn(arg)

    return call

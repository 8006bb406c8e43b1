"""The guest's health as its serial console reports it, read while the run goes on.

A kernel that soft-locks, stalls RCU or hangs a task keeps running and answers nothing; without
this watch a run would end minutes later with a transport timeout that names neither the cause
nor the console. `ConsoleWatch.poll()` reads what the console wrote since the last call (it is
cheap: `Machine.check_alive()` calls it from every wait loop, at least once a second) and
reports the first alarm line, with the lines that follow it (the call trace), as a
`HealthProblem`. Which lines are alarms is the guest kind's business (`ConsoleAlarm` tables,
e.g. `harness.guests.reference.CONSOLE_ALARMS`).
"""

from __future__ import annotations

import enum
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: After the alarm line, wait this long for the rest of the report (the call trace arrives
#: within a second under TCG) unless an end marker comes first. Keeps the run's end well
#: inside 5 s of the message.
TRACE_GRACE_S = 1.5
EXCERPT_LINES_BEFORE = 3
EXCERPT_MAX_LINES = 60
EXCERPT_MAX_CHARS = 6000


class Severity(enum.Enum):
    """What an alarm means for the run's outcome."""

    CRASH = "crash"  # the guest (or the probe) broke: a verdict failure (exit 1)
    WEDGED = "wedged"  # the guest stopped making progress: the harness cannot judge (exit 2)


@dataclass(frozen=True)
class ConsoleAlarm:
    """A console line that means the guest is sick."""

    name: str  # e.g. "soft lockup"
    pattern: re.Pattern[str]
    severity: Severity


@dataclass(frozen=True)
class HealthProblem:
    """The first alarm the console showed, and what it said."""

    alarm: ConsoleAlarm
    line: str  # the alarm line itself
    excerpt: str  # a few lines before it, it, and the report that followed
    seen_at: float  # time.monotonic() when the watch first read the line

    def describe(self) -> str:
        return f"{self.alarm.name}: {self.line.strip()}"


#: Lines that end a kernel report: once one follows the alarm the excerpt is complete.
_REPORT_END = re.compile(r"</TASK>|---\[ end (trace|Kernel panic)")


class ConsoleWatch:
    """Incremental reader of a serial log file; `path` may change (restore appends to a new
    file), which restarts the scan at that file's beginning."""

    def __init__(self, path: Path, alarms: Sequence[ConsoleAlarm] = ()) -> None:
        self.alarms = tuple(alarms)
        self._path = path
        self._offset = 0
        self._partial = ""
        self._lines: list[str] = []  # complete lines read so far (of the current file)
        self._hit: tuple[ConsoleAlarm, int, float] | None = None  # alarm, line index, seen
        self._problem: HealthProblem | None = None
        self._lock = threading.RLock()  # the run's thread and Machine's sentinel both poll

    def watch(self, path: Path, alarms: Sequence[ConsoleAlarm] | None = None) -> None:
        """Follow `path` from its beginning (a new boot or restore), forgetting any problem."""
        with self._lock:
            if alarms is not None:
                self.alarms = tuple(alarms)
            self._path = path
            self._offset = 0
            self._partial = ""
            self._lines = []
            self._hit = None
            self._problem = None

    def poll(self) -> HealthProblem | None:
        """Read what is new; return the problem once its report is complete (or the grace time
        after its first line has passed), else None. Thread-safe."""
        with self._lock:
            return self._poll()

    def _poll(self) -> HealthProblem | None:
        if self._problem is not None or not self.alarms:
            return self._problem
        first_new = len(self._lines)
        self._read()
        now = time.monotonic()
        if self._hit is None:
            for i in range(first_new, len(self._lines)):
                alarm = self._match(self._lines[i])
                if alarm is not None:
                    self._hit = (alarm, i, now)
                    break
        if self._hit is None:
            return None
        alarm, index, seen = self._hit
        after = self._lines[index + 1:index + EXCERPT_MAX_LINES]
        ended = any(_REPORT_END.search(line) for line in after)
        if ended or now - seen >= TRACE_GRACE_S:
            self._problem = HealthProblem(alarm, self._lines[index],
                                          self._excerpt(index), seen)
        return self._problem

    def flush(self) -> HealthProblem | None:
        """The problem now, without waiting for the rest of its report (the guest is known to
        be dead, e.g. pvpanic fired, so nothing more will come)."""
        with self._lock:
            if self._problem is None and self._hit is None:
                self._poll()
            if self._problem is None and self._hit is not None:
                alarm, index, seen = self._hit
                self._problem = HealthProblem(alarm, self._lines[index], self._excerpt(index),
                                              seen)
            return self._problem

    def _match(self, line: str) -> ConsoleAlarm | None:
        return next((a for a in self.alarms if a.pattern.search(line)), None)

    def _read(self) -> None:
        try:
            with open(self._path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        if not data:
            return
        self._offset += len(data)
        text = self._partial + data.decode("utf-8", errors="replace").replace("\r", "")
        *complete, self._partial = text.split("\n")
        self._lines.extend(complete)

    def _excerpt(self, index: int) -> str:
        start = max(0, index - EXCERPT_LINES_BEFORE)
        lines = self._lines[start:index + EXCERPT_MAX_LINES]
        text = "\n".join(lines)
        return text[:EXCERPT_MAX_CHARS]

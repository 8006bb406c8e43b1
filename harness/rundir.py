"""A run owns its directory: a new or empty one, or one an earlier hotadd run made, whose
artifacts are cleared first so nothing stale (an old screenshot.png) is reported as this run's.

A directory hotadd did not make is never written into unless it is empty: it may hold a
person's files. Every problem is an InputError naming the directory and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.errors import InputError

MARKER = ".hotadd-run"
#: The files a run (or the pytest plugin, or `hotadd report`) writes into its directory.
OWNED = ("result.json", "records.jsonl", "serial.log", "domain.xml", "screenshot.png",
         "report.html", "test.json")


@dataclass(frozen=True)
class RunDirClaim:
    """What claiming the directory did: the earlier run's artifacts it removed, and the
    entries it left alone (not hotadd's)."""

    path: Path
    cleared: tuple[str, ...]
    kept: tuple[str, ...]

    def describe(self) -> str | None:
        if not (self.cleared or self.kept):
            return None
        parts = [f"run dir {self.path}: reused"]
        if self.cleared:
            parts.append(f"removed the earlier run's {', '.join(self.cleared)}")
        if self.kept:
            parts.append(f"left alone {', '.join(self.kept)} (not hotadd's)")
        return "; ".join(parts)


def claim(path: Path) -> RunDirClaim:
    """Make `path` this run's directory, before anything else starts."""
    if path.exists() and not path.is_dir():
        raise InputError(f"--run-dir {path} is a file, not a directory",
                         "give a directory path (created if missing), or leave --run-dir out")
    try:
        path.mkdir(parents=True, exist_ok=True)
        entries = sorted(p.name for p in path.iterdir())
        if entries and MARKER not in entries:
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise InputError(
                f"--run-dir {path} is not empty and no hotadd run made it ({shown})",
                "give a new or empty directory, or leave --run-dir out (./runs/TIME-NAME); "
                "hotadd only clears directories it made")
        cleared = tuple(n for n in entries if n in OWNED)
        for name in cleared:
            (path / name).unlink()
        (path / MARKER).write_text("made by a hotadd run; the next run here replaces "
                                   f"{', '.join(OWNED)}\n")
    except OSError as exc:
        raise InputError(f"--run-dir {path} is not a writable directory: "
                         f"{exc.strerror or exc} ({exc.filename or path})",
                         "give a directory you can write, or leave --run-dir out") from None
    kept = tuple(n for n in entries if n not in OWNED and n != MARKER)
    return RunDirClaim(path, cleared, kept)

"""One process as proc(5)'s /proc/PID/stat shows it: the fields hotadd reads about QEMU."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcStat:
    comm: str  # the executable's name, cut to 15 characters
    state: str  # R, S, T (stopped), t (traced), Z (zombie, not yet reaped), ...
    parent: int
    session: int


def proc_stat(pid: int) -> ProcStat | None:
    """Fields 2 (comm), 3 (state), 4 (parent) and 6 (session) of /proc/PID/stat, or None if
    `pid` is gone. A zombie still has them. comm may hold spaces and parentheses, so the
    fields after it are split from its last ')'."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, parent, _group, session = stat[stat.rfind(")") + 2:].split()[:4]
    return ProcStat(stat[stat.index("(") + 1:stat.rfind(")")], state, int(parent), int(session))

"""Benchmark: the default scenario, cold (booted) and warm (restored from a saved guest), side
by side in one invocation. Prints figures; asserts nothing.

Targets on a 2-core TCG machine with the reference guest: warm default scenario <= 4 s wall,
restore to ready <= 1.5 s, cold unchanged (whole scenario <= 60 s, boot to ready <= 15 s);
the gap between the probe's `complete` and the moment hotadd knows it, median <= 20 ms.

Run: .venv/bin/python tests/benchmarks/bench_default_scenario.py [--runs 5]
All runs share one libvirt root and one saved-guest store (both fresh, in a temporary
directory): an unmeasured first run pays libvirt's QEMU capability probe and saves the guest;
then cold and warm runs alternate, so both see the same machine load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.result_file import RESULT_FILE, ResultAdd, ResultFile, read_result


@dataclass(frozen=True)
class Run:
    wall: float
    exit: int
    result: ResultFile  # its result.json, typed
    rss_kib: int  # the hotadd process's own peak RSS


#: `python -m harness` (`harness.cli.run`), plus the process's own peak RSS on its last stderr
#: line. RUSAGE_CHILDREN here would count QEMU too: `hotadd run` reaps it, and a reaped
#: process's peak RSS passes up to whoever waits for its reaper (getrusage(2)).
_HOTADD = ("import resource, sys; from harness.cli import run; code = run(); "
           "print('maxrss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
           "file=sys.stderr); sys.exit(code)")


def one_run(work: Path, root: Path, name: str, *args: str) -> Run:
    """One `hotadd run` in a subprocess, as a user runs it."""
    run_dir = work / name
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", _HOTADD, "run", "--quiet", "--json", "--run-dir", str(run_dir),
         "--libvirt-uri", f"qemu:///embed?root={root}", *args],
        capture_output=True, text=True, check=False)
    wall = time.monotonic() - t0
    rss = int(proc.stderr.split("maxrss_kib")[-1].split()[0])
    return Run(wall, proc.returncode, read_result(run_dir / RESULT_FILE), rss)


def _med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _fmt(value: float | None, unit: str) -> str:
    return "n/a" if value is None else f"{value:.3f} {unit}" if unit == "s" else \
        f"{value:.1f} {unit}"


def _stage_sum(run: Run, *stages: str) -> float | None:
    t = run.result.timings_s
    return sum(t[s] for s in stages) if all(s in t for s in stages) else None


def figures(runs: list[Run], start: tuple[str, ...]) -> dict[str, float | None]:
    adds = [a for r in runs for a in r.result.adds]

    def add_med(value: Callable[[ResultAdd], float | None]) -> float | None:
        return _med([v for a in adds if (v := value(a)) is not None])

    return {
        "wall": _med([r.wall for r in runs]),
        "start_to_ready": _med([v for r in runs if (v := _stage_sum(r, *start)) is not None]),
        "clock_uncertainty_ms": _med([u for r in runs
                                      if (u := r.result.clock.uncertainty_ms) is not None]),
        "ost_ms": add_med(lambda a: a.ost_ms), "start_ms": add_med(lambda a: a.start_ms_approx),
        "complete_ms": add_med(lambda a: a.end_ms_approx),
        "known_gap_ms": add_med(lambda a: a.known_gap_ms),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="cold and warm runs each")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hotadd-bench-", dir="/tmp") as tmp:
        work = Path(tmp)
        root = work / "lv"
        os.environ["HOTADD_SAVED_DIR"] = str(work / "saved")
        first = one_run(work, root, "first")
        cold: list[Run] = []
        warm: list[Run] = []
        for i in range(args.runs):
            cold.append(one_run(work, root, f"cold{i}", "--cold"))
            warm.append(one_run(work, root, f"warm{i}"))
    rss_mib = max(r.rss_kib for r in [first, *cold, *warm]) / 1024
    c = figures(cold, ("boot", "ready"))
    w = figures(warm, ("restore", "ready"))
    print(f"default scenario, median of {args.runs} cold and {args.runs} warm runs "
          f"(exit codes cold {[r.exit for r in cold]}, warm {[r.exit for r in warm]}; "
          f"warm starts {sum(1 for r in warm if r.result.start and r.result.start.warm)}/"
          f"{len(warm)})")
    print(f"  first run (fresh libvirt root, boots and saves the guest): {first.wall:.3f} s")
    rows = [
        ("wall time of the scenario", "wall", "s", "warm <= 4 s; cold <= 60 s"),
        ("start to ready (boot+ready / restore+ready)", "start_to_ready", "s",
         "warm <= 1.5 s; cold <= 15 s"),
        ("clock mapping uncertainty (±)", "clock_uncertainty_ms", "ms", ""),
        ("_OST after the add", "ost_ms", "ms", ""),
        ("probe start after the add (~)", "start_ms", "ms", ""),
        ("probe complete after the add (~)", "complete_ms", "ms", ""),
        ("complete -> hotadd knows it", "known_gap_ms", "ms", "<= 20 ms"),
    ]
    print(f"  {'figure':<46} {'cold':>12} {'warm':>12}   target")
    for label, key, unit, target in rows:
        print(f"  {label:<46} {_fmt(c[key], unit):>12} {_fmt(w[key], unit):>12}   {target}")
    stages = sorted({k for r in cold + warm for k in r.result.timings_s})
    for stage in stages:
        cv = _med([t[stage] for r in cold if stage in (t := r.result.timings_s)])
        wv = _med([t[stage] for r in warm if stage in (t := r.result.timings_s)])
        print(f"  stage {stage:<40} {_fmt(cv, 's'):>12} {_fmt(wv, 's'):>12}")
    for label, group in (("cold", cold), ("warm", warm)):
        via = [a.known_via for r in group for a in r.result.adds]
        print(f"  {label}: ends known via console {via.count('console')}, transport "
              f"{via.count('transport')}, never {via.count('none')}")
    print(f"  peak RSS of one hotadd process: {rss_mib:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

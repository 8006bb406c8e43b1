"""Benchmark: `hotadd check` on a trace of --records records (default 10^6), as a user runs
it, in a subprocess. Prints the file size, wall time, records per second and peak RSS; asserts
nothing. Shapes: `vetoes` (default) hot-adds that are all vetoed, so the processors stay the
same and the trace passes; `adds` completes every add, so each brings a new processor, and past
the oracle's 65,536-processor cap the trace fails as no machine's (its per-processor state
stops growing there). The oracle streams the file: the peak stays flat as the trace grows.
Run: .venv/bin/python tests/benchmarks/bench_check.py [--records N] [--shape vetoes|adds]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

from harness.oracle.model import STATUS_INSUFFICIENT_RESOURCES, HotAdd, ProtocolModel
from harness.records import Record, record_to_dict


def write_trace(handle: TextIO, records: int, shape: str) -> None:
    """A trace of about `records` records: load, replay of 2, hot-adds, the end."""
    add = HotAdd(veto=STATUS_INSUFFICIENT_RESOURCES) if shape == "vetoes" else HotAdd()
    model = ProtocolModel(existing=2, hotadds=(add,) * max(0, (records - 8) // 2))

    def write(record: Record) -> None:
        handle.write(json.dumps(record_to_dict(record), separators=(",", ":")) + "\n")

    model.stream(write)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--shape", choices=("vetoes", "adds"), default="vetoes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hotadd-bench-check-") as tmp:
        trace = Path(tmp) / "records.jsonl"
        with trace.open("w") as handle:
            write_trace(handle, args.records, args.shape)
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "harness", "check", "--profile",
                               "windows", str(trace)], capture_output=True, text=True,
                              check=False)
        wall = time.monotonic() - t0
        # the only child this process reaped: the checking process (KiB on Linux)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        head = proc.stdout.splitlines()[0] if proc.stdout else proc.stderr.strip()
        size = trace.stat().st_size
    print(f"hotadd check: {head}")
    print(f"  trace: {args.records} records ({args.shape}), {size / 2**20:.1f} MiB")
    print(f"  wall time: {wall:.2f} s ({args.records / wall:,.0f} records/s)")
    print(f"  peak RSS of the checking process: {peak / 1024:.1f} MiB")
    return 0 if proc.returncode in (0, 1) else 1  # a verdict either way; 2 is an error


if __name__ == "__main__":
    raise SystemExit(main())

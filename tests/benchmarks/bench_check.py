"""Benchmark: `hotadd check` on a valid trace of --records records (default 10^6: hot-adds
of a Windows-profile guest), as a user runs it, in a subprocess. Prints the file size, wall time,
records per second and peak RSS; asserts nothing. The oracle streams the file, so the peak
stays flat as the trace grows (compare --records 100000 with the default).
Run: .venv/bin/python tests/benchmarks/bench_check.py [--records N]
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

from harness.oracle.model import HotAdd, ProtocolModel
from harness.records import Record, record_to_dict


def write_trace(handle: TextIO, records: int) -> None:
    """A valid trace of about `records` records: load, replay of 2, hot-adds, the end."""
    adds = max(0, (records - 8) // 2)
    model = ProtocolModel(existing=2, hotadds=(HotAdd(),) * adds)

    def write(record: Record) -> None:
        handle.write(json.dumps(record_to_dict(record), separators=(",", ":")) + "\n")

    model.stream(write)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hotadd-bench-check-") as tmp:
        trace = Path(tmp) / "records.jsonl"
        with trace.open("w") as handle:
            write_trace(handle, args.records)
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
    print(f"  trace: {args.records} records, {size / 2**20:.1f} MiB")
    print(f"  wall time: {wall:.2f} s ({args.records / wall:,.0f} records/s)")
    print(f"  peak RSS of the checking process: {peak / 1024:.1f} MiB")
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

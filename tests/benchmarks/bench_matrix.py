"""Benchmark: examples/smoke.toml serially and on 2 workers, in one invocation: both wall
times and their ratio, and each case's time. Prints figures; asserts nothing.
Run: .venv/bin/python tests/benchmarks/bench_matrix.py [--matrix FILE] [--workers N]

Both runs go through the real `hotadd matrix` CLI. Worker roots are reused slots, so after a
first ever run libvirt's QEMU capability cache is warm for both (pass --warm-up to make sure).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def one(matrix: Path, workers: int, work: Path) -> tuple[float, int, dict[str, float]]:
    junit = work / f"w{workers}.xml"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "matrix", str(matrix), "--workers", str(workers),
         "--junitxml", str(junit), "--artifacts", str(work / f"w{workers}")],
        capture_output=True, text=True, check=False)
    wall = time.monotonic() - t0
    cases = {tc.get("name", ""): float(tc.get("time", "0"))
             for tc in ET.parse(junit).iter("testcase")} if junit.exists() else {}
    return wall, proc.returncode, cases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--matrix", type=Path, default=REPO / "examples" / "smoke.toml")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warm-up", action="store_true",
                        help="run the matrix on N workers once first, unmeasured")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hotadd-bench-matrix-") as tmp:
        work = Path(tmp)
        if args.warm_up:
            one(args.matrix, args.workers, work / "warm")
        serial = one(args.matrix, 1, work)
        parallel = one(args.matrix, args.workers, work)
    print(f"{args.matrix.name}: {len(serial[2])} cases")
    print(f"  serial      wall {serial[0]:7.1f} s  (exit {serial[1]})")
    print(f"  {args.workers} workers   wall {parallel[0]:7.1f} s  (exit {parallel[1]})")
    print(f"  ratio serial/parallel {serial[0] / parallel[0]:.2f}")
    for name in serial[2]:
        print(f"    {name:<55} serial {serial[2][name]:6.1f} s   parallel "
              f"{parallel[2].get(name, float('nan')):6.1f} s")
    return 0 if serial[1] == parallel[1] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

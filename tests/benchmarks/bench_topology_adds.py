"""Benchmark: per-add latency on topologies and orders that once hung the reference guest
(target: every add <= 2 s from setVcpu to the probe's complete, on a 2-core TCG machine; see
vm/reference/README.md, "Why possible_cpus"). Prints figures; asserts nothing.
Run: .venv/bin/python tests/benchmarks/bench_topology_adds.py [--only NAME]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness.result_file import RESULT_FILE, ResultFile, read_result

TARGET_MS = 2000.0

#: name -> hotadd run arguments (topology, boot vCPUs, vCPU ids in add order)
CASES: dict[str, list[str]] = {
    "2s2c2t-7,5,6,4,3": ["--sockets", "2", "--cores", "2", "--threads", "2", "--boot-vcpus", "2",
                         "--vcpu-ids", "7,5,6,4,3"],
    "2s3c-ascending-hole": ["--sockets", "2", "--cores", "3", "--boot-vcpus", "1",
                            "--vcpu-ids", "1,2,3,4,5"],
    "2s2d2c2t-15,9,3,12": ["--sockets", "2", "--dies", "2", "--cores", "2", "--threads", "2",
                           "--boot-vcpus", "2", "--vcpu-ids", "15,9,3,12"],
    "1s255c-254,65,128": ["--sockets", "1", "--cores", "255", "--boot-vcpus", "2",
                          "--vcpu-ids", "254,65,128"],
}


@dataclass(frozen=True)
class Run:
    wall: float
    exit: int
    result: ResultFile


def one_run(work: Path, root: Path, name: str, args: list[str]) -> Run:
    run_dir = work / name
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "run", "--quiet", "--json", "--run-dir", str(run_dir),
         "--libvirt-uri", f"qemu:///embed?root={root}", "--adds",
         str(len(args[args.index("--vcpu-ids") + 1].split(","))), *args],
        capture_output=True, text=True, check=False)
    return Run(time.monotonic() - t0, proc.returncode, read_result(run_dir / RESULT_FILE))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=sorted(CASES), action="append")
    args = parser.parse_args()
    names = args.only or list(CASES)
    with tempfile.TemporaryDirectory(prefix="hotadd-bench-", dir="/tmp") as tmp:
        root = Path(tmp) / "lv"
        for name in names:
            run = one_run(Path(tmp), root, name, CASES[name])
            ends = [a.end_ms_approx for a in run.result.adds]
            worst = max((e for e in ends if e is not None), default=float("nan"))
            print(f"{name:<22} exit {run.exit}  wall {run.wall:6.1f} s  "
                  f"add end ms {[None if e is None else round(e) for e in ends]}  "
                  f"worst {worst:.0f} (target <= {TARGET_MS:.0f})")
            if run.result.error:
                print(f"  error: {run.result.error.splitlines()[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

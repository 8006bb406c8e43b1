"""A process that takes a capacity lease, for tests of the gate between real processes.

python -m tests.support.capacity_holder KEY VCPUS MEMORY NEED_VCPUS NEED_MEMORY LABEL
Prints "waiting <labels>" each time it has to wait, "held" once it holds the lease; then
releases when a line arrives on stdin (or dies when killed), printing "released".
"""

from __future__ import annotations

import sys

from harness.host.capacity import Capacity, Holder, lease


def main(argv: list[str]) -> None:
    key, vcpus, memory, need_v, need_m, label = argv

    def waiting(holders: list[Holder]) -> None:
        print("waiting " + ",".join(sorted(h.label for h in holders)), flush=True)

    with lease(key, Capacity(int(vcpus), int(memory)), Capacity(int(need_v), int(need_m)),
               label, waiting):
        print("held", flush=True)
        sys.stdin.readline()
    print("released", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

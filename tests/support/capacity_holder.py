"""A process that takes a capacity lease, for tests of the gate between real processes.

python -m tests.support.capacity_holder KEY VCPUS MEMORY NEED_VCPUS NEED_MEMORY LABEL
Prints "waiting <labels>" each time it has to wait, "held" once it holds the lease; then
releases when a line arrives on stdin (or dies when killed), printing "released".
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from harness.host.capacity import Capacity, Holder, lease
from tests.support.processes import LineProcess


class HolderProcess(LineProcess):
    """This module run as a process (a controller taking a lease), driven by its lines."""

    def __init__(self, need_vcpus: int, need_memory: int, label: str,
                 total: tuple[int, int] = (2, 1024), key: str = "lab",
                 env: Mapping[str, str] | None = None) -> None:
        super().__init__("tests.support.capacity_holder",
                         [key, str(total[0]), str(total[1]), str(need_vcpus), str(need_memory),
                          label], env)

    def release(self) -> str:
        return self.go()


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

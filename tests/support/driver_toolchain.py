"""Build and run the KMDF probe's portable C on this Linux host, for the `test_driver_*` tests.

The recorder's portable part (driver/recorder/probe_ring.c, probe_format.c, probe_veto.c,
probe_core.c, recorder_name.c: the ring, the formatter, the writer, the veto, the registration
and callback decisions, a writer's file name) is plain C, so the host gcc compiles it under the
sanitizers together with the test harness driver/tests/ring_harness.c, which plays the kernel's
producers, register call, clock, record file and the worker. Builds go to a pytest temporary
directory, never into the source tree. A missing compiler fails the test and
names the Debian package to install; nothing is skipped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

DRIVER_DIR = Path(__file__).resolve().parents[2] / "driver"
#: The recorder: the portable record/ring/format code and its kernel part (recorder_wdm.c),
#: which the probe and any developer's driver compile in.
RECORDER_DIR = DRIVER_DIR / "recorder"
PORTABLE_SOURCES = tuple(RECORDER_DIR / name for name in ("probe_ring.c", "probe_format.c",
                                                        "probe_veto.c", "probe_core.c",
                                                        "recorder_name.c"))
RING_HARNESS = DRIVER_DIR / "tests" / "ring_harness.c"
MINGW_COMPAT = DRIVER_DIR / "tests" / "mingw_ddk_compat.h"

HOST_CC = ("gcc", "gcc")  # (command, Debian package)
MINGW_CC = ("x86_64-w64-mingw32-gcc", "mingw-w64")

# Values of the enums in driver/recorder/probe_public.h, by the names the records carry.
DRIVER_EVENTS = {"load": 1, "registered": 2, "register_failed": 3, "deregistered": 4,
                 "unload": 5, "dropped": 6}
NOTIFY_STATES = {"start": 0, "complete": 1, "failure": 2}
PHASES = {"replay": 1, "hotadd": 2}
MAX_LINE = 512  # HAP_MAX_LINE


def require_tool(command: str, package: str) -> str:
    """The tool's path; fails the calling test naming the package when it is missing."""
    path = shutil.which(command)
    if path is None:
        pytest.fail(f"{command} is not installed: the driver tests need it. Install the Debian "
                    f"package {package} (apt-get install {package}; ./setup.sh does this).",
                    pytrace=False)
    return path


def run_checked(argv: list[str], *, stdin: str = "", timeout: float = 120) -> str:
    """Run a command; fail the test with its stderr when it exits non-zero."""
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout,
                          check=False)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr}", pytrace=False)
    return done.stdout


@dataclass(frozen=True)
class VetoPolicy:
    """The service's VetoIndex / VetoStatus / VetoDuringReplay values."""

    index: int
    status: int
    during_replay: bool = False


NO_VETO = 0xFFFF_FFFF  # HAP_NO_VETO: VetoIndex absent


@dataclass(frozen=True)
class RingHarness:
    """The built ring_harness binary (see its header comment for the modes)."""

    binary: Path

    def records(self, specs: Iterable[str], capacity: int = 64, drain_every: int = 0,
                veto: VetoPolicy | None = None) -> str:
        """Append one record per spec line, drain every `drain_every` appends; JSONL out.

        The clock reads each spec's `t`. With `veto`, every notify goes through the callback's
        core path: op_status is the driver's decision, op_status_in the spec's `op_in`.
        """
        text = "".join(spec + "\n" for spec in specs)
        argv = [str(self.binary), "records", str(capacity), str(drain_every)]
        if veto is not None:
            argv += [str(veto.index), str(veto.status), str(int(veto.during_replay))]
        return run_checked(argv, stdin=text)

    def write_faults(self, specs: Iterable[str], faults: Sequence[str], capacity: int = 64,
                     drain_every: int = 0) -> str:
        """As `records`, drained through the driver's writer into a file whose n-th write
        obeys faults[n] ("-" whole, "K" K bytes, "E" fails, "eK" fails after K bytes); the
        file's content out."""
        text = "".join(spec + "\n" for spec in specs)
        return run_checked([str(self.binary), "write-faults", str(capacity), str(drain_every),
                            *faults], stdin=text)

    def interleave(self) -> str:
        """Two producers, one stalled inside its clock reading until the other appended."""
        return run_checked([str(self.binary), "interleave"])

    def register_window(self, processors: int, when: str) -> str:
        """load, a replay of `processors` with a hot-add on another thread at `when`
        ("mid", "after" or "none"), registered, deregistered, unload."""
        return run_checked([str(self.binary), "register-window", str(processors), when])

    def lifecycle(self, flags: int, processors: int) -> str:
        """load (5 s of fake clock after initialisation), HapCoreRegister(flags), unload."""
        return run_checked([str(self.binary), "lifecycle", str(flags), str(processors)])

    def veto_race(self, threads: int) -> int:
        """How many of `threads` simultaneous hot-add Starts of one index got vetoed."""
        return int(run_checked([str(self.binary), "veto-race", str(threads)]))

    def concurrent(self, capacity: int, producers: int, per_producer: int) -> str:
        return run_checked([str(self.binary), "concurrent", str(capacity), str(producers),
                            str(per_producer)], timeout=300)

    def ticks_to_ns(self, ticks: int, frequency: int) -> int:
        return int(run_checked([str(self.binary), "ticks", str(ticks), str(frequency)]))

    def writer_file(self, name: str, capacity: int = 64) -> str:
        """The record file name of writer `name` (recorder_name.c), or "invalid"."""
        return run_checked([str(self.binary), "writer-file", name, str(capacity)]).strip()

    def limits(self) -> dict[str, int]:
        out = run_checked([str(self.binary), "limits"])
        return {name: int(value) for name, value in (line.split() for line in out.splitlines())}


def build_ring_harness(out_dir: Path, sanitizer: str = "address,undefined") -> RingHarness:
    """Compile ring_harness.c + the portable driver sources with the host gcc and sanitizers."""
    gcc = require_tool(*HOST_CC)
    binary = out_dir / f"ring_harness-{sanitizer.replace(',', '-')}"
    run_checked([gcc, "-std=c11", "-D_POSIX_C_SOURCE=200809L", "-O1", "-g",
                 "-Wall", "-Wextra", "-Werror", "-pedantic",
                 f"-fsanitize={sanitizer}", "-fno-sanitize-recover=all",
                 "-fno-omit-frame-pointer", f"-I{RECORDER_DIR}", "-o", str(binary),
                 str(RING_HARNESS), *map(str, PORTABLE_SOURCES), "-pthread"])
    return RingHarness(binary)


def spec(kind: str, **fields: Any) -> str:
    """One ring_harness input line, with enum fields given by their record names."""
    names = {"event": DRIVER_EVENTS, "state": NOTIFY_STATES, "phase": PHASES}
    parts = [f"kind={kind}"]
    for key, value in fields.items():
        if key in names and isinstance(value, str):
            value = names[key][value]
        parts.append(f"{key}={value}")
    return " ".join(parts)


def parse_lines(output: str) -> list[dict[str, Any]]:
    """Every line of the output as JSON (a line that does not parse fails the test)."""
    records: list[dict[str, Any]] = []
    for number, line in enumerate(output.splitlines(), start=1):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            pytest.fail(f"line {number} is not JSON ({exc.msg}): {line!r}", pytrace=False)
        assert isinstance(obj, dict), f"line {number} is not a JSON object: {line!r}"
        assert len(line) + 1 <= MAX_LINE, f"line {number} exceeds HAP_MAX_LINE: {line!r}"
        records.append(obj)
    return records


def assert_seq_complete(records: Sequence[Mapping[str, Any]]) -> None:
    """seq is 1, 2, 3, ... without gaps, as record format v1 requires."""
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))

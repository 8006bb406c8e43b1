"""ConsoleWatch against a real console: the serial log of the Linux 6.1 reference guest that
hung in stop_machine (vm/reference/README.md), written into a file piece by piece the way QEMU
writes it. The end-to-end behaviour with real faults is in tests/vm/test_health_watch.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import GuestCrashed, GuestWedged
from harness.guests.reference import CONSOLE_ALARMS
from harness.host.health import ConsoleWatch, Severity

CONSOLE = (Path(__file__).parents[1] / "data" / "consoles"
           / "linux61_soft_lockup_stop_machine.log").read_text()


def write(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def test_the_soft_lockup_is_reported_with_its_call_trace(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    watch = ConsoleWatch(log, CONSOLE_ALARMS)
    assert watch.poll() is None, "no file yet: nothing to say"
    cut = CONSOLE.index("soft lockup") + 5
    write(log, CONSOLE[:cut])  # QEMU flushed half of the alarm line
    assert watch.poll() is None
    write(log, CONSOLE[cut:])
    problem = watch.poll()
    assert problem is not None and problem.alarm.name == "soft lockup"
    assert problem.alarm.severity is Severity.WEDGED
    assert problem.line.endswith("stuck for 26s! [migration/0:16]")
    assert "multi_cpu_stop" in problem.excerpt and "</TASK>" in problem.excerpt
    assert "Booting Node 0 Processor 3 APIC 0x5" in problem.excerpt, "context before the alarm"
    assert watch.poll() is problem, "the first problem stays the answer"


def test_an_alarm_without_its_report_waits_for_the_grace_time_or_a_flush(
        tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    watch = ConsoleWatch(log, CONSOLE_ALARMS)
    write(log, "[ 1.0] Kernel panic - not syncing: hotadd-probe: injected panic\n")
    assert watch.poll() is None, "the report may still be coming"
    problem = watch.flush()
    assert problem is not None and problem.alarm.severity is Severity.CRASH


def test_watching_a_new_file_forgets_the_old_problem(tmp_path: Path) -> None:
    first, second = tmp_path / "a.log", tmp_path / "b.log"
    write(first, CONSOLE)
    watch = ConsoleWatch(first, CONSOLE_ALARMS)
    assert watch.poll() is not None
    write(second, "[ 1.0] hotadd-guest: ready\n")
    watch.watch(second)
    assert watch.poll() is None


def test_probe_records_and_normal_boot_lines_are_not_alarms(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    healthy = "".join(line + "\n" for line in CONSOLE.splitlines()[:4])
    write(log, healthy + '[ 5.0] hotadd-probe: {"v":1,"kind":"driver","event":"load"}\n')
    watch = ConsoleWatch(log, CONSOLE_ALARMS)
    assert watch.poll() is None and watch.flush() is None


@pytest.mark.parametrize("cls", [GuestWedged, GuestCrashed])
def test_the_excerpt_is_part_of_the_error_message(cls: type[GuestWedged]) -> None:
    exc = cls("guest is sick", "read the serial log", excerpt="line one\nline two")
    assert exc.excerpt == "line one\nline two" and exc.fix == "read the serial log"
    assert str(exc).endswith("console:\n    line one\n    line two")


# One line per alarm in Linux 6.1's wording (kernel/watchdog.c, kernel/rcu/tree_stall.h,
# kernel/hung_task.c, arch/x86/mm/fault.c, kernel/panic.c); the first is from this host.
SAMPLES = [
    ("watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [migration/0:16]", "soft lockup"),
    ("rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:", "RCU stall"),
    ("rcu: INFO: rcu_sched self-detected stall on CPU", "RCU stall"),
    ("INFO: task sh:123 blocked for more than 120 seconds.", "hung task"),
    ("BUG: kernel NULL pointer dereference, address: 0000000000000000", "oops"),
    ("general protection fault, probably for non-canonical address 0xdead: 0000 [#1]", "oops"),
    ("Oops: 0002 [#1] PREEMPT SMP NOPTI", "oops"),
    ("Kernel panic - not syncing: sysrq triggered crash", "kernel panic"),
    ("NMI watchdog: Watchdog detected hard LOCKUP on cpu 1", "hard lockup"),
]


@pytest.mark.parametrize(("line", "name"), SAMPLES)
def test_each_alarm_recognises_the_kernel_wording(tmp_path: Path, line: str, name: str) -> None:
    log = tmp_path / "serial.log"
    write(log, f"[   12.345678] {line}\n")
    problem = ConsoleWatch(log, CONSOLE_ALARMS).flush()
    assert problem is not None and problem.alarm.name == name

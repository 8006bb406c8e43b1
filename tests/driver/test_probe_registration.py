"""The probe's registration (issue 12): Flags refused before the register call, `load` at the
epoch, and replay vs hot-add decided by thread, judged by the oracle.

driver/recorder/probe_core.c runs in driver/tests/ring_harness.c with a fake register call that
replays on the calling thread while a second thread delivers a hot-add, under ASan/UBSan and
ThreadSanitizer.
"""

from __future__ import annotations

import pytest

from harness.oracle import HostFacts, Profile, check
from harness.records import parse_records
from tests.support.driver_toolchain import RingHarness, assert_seq_complete, parse_lines

STATUS_INVALID_PARAMETER = 0xC000_000D
LIFECYCLE_STEP_NS = 1_000  # ring_harness.c: each fake clock reading is 1 us later
BOOT = 3




@pytest.mark.parametrize("flags", [2, 3, 0x8000_0001])
def test_unknown_flag_bits_are_refused_with_invalid_parameter(harness: RingHarness,
                                                              flags: int) -> None:
    output = harness.lifecycle(flags, BOOT)  # the harness dies if the register call ran
    records = parse_lines(output)
    assert [(r["event"], r.get("status")) for r in records] == [
        ("load", None), ("register_failed", STATUS_INVALID_PARAMETER), ("unload", None)]
    assert records[0]["flags"] == flags
    verdict = check(parse_records(output.splitlines()), Profile.WINDOWS)
    assert verdict.passed and not verdict.findings, verdict.findings


@pytest.mark.parametrize("flags", [0, 1])
def test_documented_flags_reach_the_register_call(harness: RingHarness, flags: int) -> None:
    output = harness.lifecycle(flags, BOOT)
    events = [r.get("event", r.get("phase")) for r in parse_lines(output)]
    replay = ["replay"] * (2 * BOOT if flags else 0)
    assert events == ["load", *replay, "registered", "deregistered", "unload"]
    assert check(parse_records(output.splitlines()), Profile.WINDOWS).passed


def test_load_is_time_zero_however_long_driver_entry_took_before_it(
        harness: RingHarness) -> None:
    """The fake clock has run 5 s between initialisation and `load` (file, writer thread):
    the epoch is taken just before `load`, so it is stamped one clock reading later, not 5 s."""
    records = parse_lines(harness.lifecycle(1, BOOT))
    assert records[0]["event"] == "load"
    assert records[0]["t_ns"] == LIFECYCLE_STEP_NS
    assert records[-1]["t_ns"] < 1_000_000


def _phases(records: list[dict[str, object]]) -> list[tuple[object, ...]]:
    return [(r["state"], r["phase"], r["nt_number"]) for r in records if r["kind"] == "notify"]


def _facts() -> HostFacts:
    return HostFacts(adds_performed=1, adds_expected_ok=1, boot_cpus=BOOT, guest_count=BOOT + 1)


def test_a_hot_add_after_the_replay_inside_the_register_call_is_a_hotadd(
        threaded: RingHarness) -> None:
    """The old probe set a flag around the register call, so a hot-add on another thread in
    that window was labelled replay and the oracle failed the replay for a processor that was
    never active at load."""
    output = threaded.register_window(BOOT, "after")
    records = parse_lines(output)
    assert_seq_complete(records)
    replay = [(s, "replay", n) for s in ("start", "complete") for n in range(BOOT)]
    assert _phases(records) == [*replay, ("start", "hotadd", BOOT), ("complete", "hotadd", BOOT)]
    assert records[-3]["event"] == "registered"  # the hot-add came before it
    verdict = check(parse_records(output.splitlines()), Profile.WINDOWS, _facts())
    assert verdict.passed and not verdict.findings, verdict.findings


def test_a_hot_add_in_the_middle_of_the_replay_is_labelled_and_reported(
        threaded: RingHarness) -> None:
    """Between the replay's Starts and Completes: the kernel's lock should make this
    impossible (re), so the oracle reports it, as a warning, and nothing else: the counts are
    judged in file order, the labels are the probe's."""
    output = threaded.register_window(BOOT, "mid")
    records = parse_lines(output)
    starts = [("start", "replay", n) for n in range(BOOT)]
    completes = [("complete", "replay", n) for n in range(BOOT)]
    assert _phases(records) == [*starts, ("start", "hotadd", BOOT),
                                ("complete", "hotadd", BOOT), *completes]
    verdict = check(parse_records(output.splitlines()), Profile.WINDOWS, _facts())
    assert verdict.passed
    assert [(f.rule_id, f.severity.value) for f in verdict.findings] == [
        ("replay.not_interleaved", "warn")]


def test_no_hot_add_in_the_window_changes_nothing(harness: RingHarness) -> None:
    output = harness.register_window(BOOT, "none")
    verdict = check(parse_records(output.splitlines()), Profile.WINDOWS)
    assert verdict.passed and not verdict.findings

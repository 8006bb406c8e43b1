"""The KMDF probe's record formatter and lock-free ring, compiled with the host gcc.

driver/recorder/probe_format.c, probe_ring.c, probe_veto.c and probe_core.c are the exact files the
driver links; here they run under AddressSanitizer + UBSan (and ThreadSanitizer for the
concurrent producers) inside driver/tests/ring_harness.c, and every line they write is parsed
with Python's json. The tests of issue 12's fixes (time order, op_status_in, phase by thread,
Flags, the load epoch, write losses) are in tests/driver/.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.support.driver_toolchain import (
    DRIVER_EVENTS,
    NO_VETO,
    RingHarness,
    VetoPolicy,
    assert_seq_complete,
    parse_lines,
    spec,
)

U32_MAX = 0xFFFF_FFFF
U64_MAX = 2**64 - 1
STATUS_INSUFFICIENT_RESOURCES = 0xC000_009A
STATUS_INVALID_PARAMETER = 0xC000_000D


def _one(harness: RingHarness, line: str) -> tuple[dict[str, Any], list[str]]:
    """Format a single record; its JSON object and its key order."""
    records = parse_lines(harness.records([line]))
    assert len(records) == 1
    return records[0], list(records[0])


COMMON = ["v", "seq", "t_ns", "kind"]


@pytest.mark.parametrize(("line", "expected"), [
    (spec("driver", event="load", t=0, active=4, flags=1),
     {"event": "load", "active_count": 4, "flags": 1}),
    (spec("driver", event="load", t=0, active=2, flags=0, veto_index=3,
          veto_status=STATUS_INSUFFICIENT_RESOURCES, veto_replay=1),
     {"event": "load", "active_count": 2, "flags": 0, "veto_index": 3,
      "veto_status": STATUS_INSUFFICIENT_RESOURCES, "veto_during_replay": 1}),
    (spec("driver", event="load", t=0, active=2, flags=1, qpc=U64_MAX - 1, qpc_hz=10_000_000),
     {"event": "load", "active_count": 2, "flags": 1, "qpc": U64_MAX - 1,
      "qpc_hz": 10_000_000}),
    (spec("driver", event="registered", t=7), {"event": "registered"}),
    (spec("driver", event="register_failed", t=7, status=STATUS_INSUFFICIENT_RESOURCES),
     {"event": "register_failed", "status": STATUS_INSUFFICIENT_RESOURCES}),
    (spec("driver", event="deregistered", t=7), {"event": "deregistered"}),
    (spec("driver", event="unload", t=7), {"event": "unload"}),
    (spec("driver", event="dropped", t=7, count=12), {"event": "dropped", "count": 12}),
], ids=["load", "load-with-veto", "load-with-clock", "registered", "register_failed",
        "deregistered", "unload", "dropped"])
def test_every_driver_event_is_formatted_with_its_fields_in_order(
        harness: RingHarness, line: str, expected: dict[str, Any]) -> None:
    obj, keys = _one(harness, line)
    assert obj == {"v": 1, "seq": 1, "t_ns": obj["t_ns"], "kind": "driver", **expected}
    assert keys == [*COMMON, *expected]


@pytest.mark.parametrize("state", ["start", "complete", "failure"])
@pytest.mark.parametrize("phase", ["replay", "hotadd"])
def test_every_notify_state_and_phase_is_formatted(harness: RingHarness, state: str,
                                                   phase: str) -> None:
    obj, keys = _one(harness, spec("notify", state=state, phase=phase, t=123456, nt=5, group=1,
                                   number=3, status=0, op=0, op_in=0, active=6, irql=1,
                                   map_status=0, map_group=1, map_number=3))
    assert obj == {"v": 1, "seq": 1, "t_ns": 123456, "kind": "notify", "state": state,
                   "phase": phase, "nt_number": 5, "group": 1, "number": 3, "status": 0,
                   "op_status": 0, "op_status_in": 0, "active_count": 6, "irql": 1,
                   "map_status": 0, "map_group": 1, "map_number": 3}
    assert keys == list(obj)


def test_failed_processor_number_lookup_carries_no_mapped_number(harness: RingHarness) -> None:
    obj, _ = _one(harness, spec("notify", state="start", phase="hotadd", nt=9, active=9,
                                map_status=STATUS_INVALID_PARAMETER, map_group=4, map_number=4))
    assert obj["map_status"] == STATUS_INVALID_PARAMETER
    assert "map_group" not in obj and "map_number" not in obj


def test_largest_values_are_exact_and_fit_the_documented_line_length(
        harness: RingHarness) -> None:
    obj, _ = _one(harness, spec("notify", state="complete", phase="replay", t=U64_MAX,
                                nt=U32_MAX, group=0xFFFF, number=0xFF, status=U32_MAX,
                                op=U32_MAX, op_in=U32_MAX, active=U32_MAX, irql=0xFF,
                                map_status=0, map_group=0xFFFF, map_number=0xFF))
    assert (obj["t_ns"], obj["nt_number"], obj["group"], obj["number"]) == (
        U64_MAX, U32_MAX, 0xFFFF, 0xFF)
    assert obj["status"] == obj["op_status"] == obj["op_status_in"] == U32_MAX
    assert obj["active_count"] == U32_MAX


def test_the_longest_possible_line_fits_hap_max_line(harness: RingHarness) -> None:
    """A notify with every field at its widest, its time raised (t_raw_ns), after a loss."""
    lines = [spec("notify", state="complete", phase="replay", t=U64_MAX, nt=U32_MAX,
                  group=0xFFFF, number=0xFF, status=U32_MAX, op=U32_MAX, op_in=U32_MAX,
                  active=U32_MAX, irql=0xFF, map_status=0, map_group=0xFFFF, map_number=0xFF),
             spec("notify", state="complete", phase="replay", t=U64_MAX - 1, nt=U32_MAX,
                  group=0xFFFF, number=0xFF, status=U32_MAX, op=U32_MAX, op_in=U32_MAX,
                  active=U32_MAX, irql=0xFF, map_status=0, map_group=0xFFFF, map_number=0xFF)]
    records = parse_lines(harness.records(lines))  # asserts every line <= HAP_MAX_LINE
    assert records[1]["t_ns"] == U64_MAX and records[1]["t_raw_ns"] == U64_MAX - 1
    # parse_lines asserted len(line) + 1 <= HAP_MAX_LINE for every line.


def test_records_unknown_to_the_formatter_are_counted_as_lost_not_written(
        harness: RingHarness) -> None:
    lines = [spec("driver", event="load", active=1, flags=1),
             spec("notify", state=7, phase="hotadd"),          # unknown state
             spec("driver", event="registered"),
             spec("notify", state="start", phase=0),           # unknown phase
             spec("driver", event=0),                          # unknown event
             spec("driver", event="unload")]
    records = parse_lines(harness.records(lines, drain_every=1))
    assert_seq_complete(records)
    # Each unformattable record is reported just before the next record the worker formats
    # after it (the unknown phase before the unknown event, and so on).
    assert [(r.get("event"), r.get("count")) for r in records] == [
        ("load", None), ("dropped", 1), ("registered", None), ("dropped", 1),
        ("dropped", 1), ("unload", None)]


def test_ring_wraps_around_many_times_without_loss_or_reordering(
        harness: RingHarness) -> None:
    lines = [spec("notify", state="start", phase="hotadd", t=i, nt=i, active=i)
             for i in range(1000)]
    records = parse_lines(harness.records(lines, capacity=4, drain_every=3))
    assert_seq_complete(records)
    assert [r["nt_number"] for r in records] == list(range(1000))
    assert all(r["kind"] == "notify" for r in records)


def test_losses_are_reported_where_they_happened(harness: RingHarness) -> None:
    # Capacity 4, drained after every 6th append: appends 5-6 find the ring full.
    lines = [spec("notify", state="start", phase="hotadd", t=100 + i, nt=i)
             for i in range(12)]
    records = parse_lines(harness.records(lines, capacity=4, drain_every=6))
    assert_seq_complete(records)
    shape = [("dropped", r["count"]) if r["kind"] == "driver" else r["nt_number"]
             for r in records]
    # 0-3 stored; 4, 5 lost; drain; 6-9 stored; 10, 11 lost; final drain.
    assert shape == [0, 1, 2, 3, ("dropped", 2), 6, 7, 8, 9, ("dropped", 2)]
    # A loss in the middle is stamped with the time of the record after it, the final one
    # with the time of the final drain.
    assert records[4]["t_ns"] == 106 and records[9]["t_ns"] == 111


def test_losses_at_the_end_are_flushed_by_the_final_drain(harness: RingHarness) -> None:
    lines = [spec("driver", event="load", active=1, flags=1)] + [
        spec("notify", state="start", phase="hotadd", nt=i) for i in range(9)]
    records = parse_lines(harness.records(lines, capacity=2, drain_every=0))
    assert_seq_complete(records)
    assert [r.get("event", r["kind"]) for r in records] == ["load", "notify", "dropped"]
    assert records[-1]["count"] == 8


def _assert_time_order(records: list[dict[str, Any]]) -> None:
    """t_ns never decreases in file order, and no record needed raising to make it so."""
    times = [r["t_ns"] for r in records]
    assert times == sorted(times)
    assert not [r for r in records if "t_raw_ns" in r]


def _per_producer(records: list[dict[str, Any]]) -> dict[int, list[int]]:
    sequences: dict[int, list[int]] = defaultdict(list)
    for r in records:
        if r["kind"] == "notify":
            sequences[r["nt_number"]].append(r["status"])
    return sequences


@pytest.mark.parametrize("flavour", ["asan", "tsan"])
def test_concurrent_producers_lose_nothing_when_the_ring_is_large_enough(
        harness: RingHarness, tsan_harness: RingHarness, flavour: str) -> None:
    binary = harness if flavour == "asan" else tsan_harness
    producers, each = 4, 20_000
    records = parse_lines(binary.concurrent(capacity=1 << 17, producers=producers,
                                            per_producer=each))
    assert_seq_complete(records)
    assert not [r for r in records if r["kind"] == "driver"]
    # Every producer's records arrive complete and in the order it appended them, and the
    # ring's time stamps agree with the order of the file.
    assert _per_producer(records) == {p: list(range(each)) for p in range(producers)}
    _assert_time_order(records)


@pytest.mark.parametrize("flavour", ["asan", "tsan"])
def test_concurrent_producers_on_a_small_ring_account_for_every_record(
        harness: RingHarness, tsan_harness: RingHarness, flavour: str) -> None:
    binary = harness if flavour == "asan" else tsan_harness
    producers, each = 4, 20_000
    records = parse_lines(binary.concurrent(capacity=64, producers=producers,
                                            per_producer=each))
    assert_seq_complete(records)
    written = sum(1 for r in records if r["kind"] == "notify")
    dropped = [r for r in records if r["kind"] == "driver"]
    assert {r["event"] for r in dropped} <= {"dropped"}
    assert written + sum(r["count"] for r in dropped) == producers * each
    assert dropped, "a 64-slot ring cannot absorb 80000 appends: losses must be reported"
    for values in _per_producer(records).values():
        assert values == sorted(set(values)), "a producer's records were reordered"
    _assert_time_order(records)


# (state, phase, nt_number) the kernel delivers -> the op_status the callback writes.
VETO_CASES = {
    "hot-add veto fires once": (
        VetoPolicy(index=2, status=STATUS_INSUFFICIENT_RESOURCES),
        [("start", "replay", 2, 0), ("complete", "replay", 2, 0), ("start", "hotadd", 3, 0),
         ("start", "hotadd", 2, STATUS_INSUFFICIENT_RESOURCES), ("failure", "hotadd", 2, 0),
         ("start", "hotadd", 2, 0), ("complete", "hotadd", 2, 0)]),
    "replay veto": (
        VetoPolicy(index=1, status=STATUS_INVALID_PARAMETER, during_replay=True),
        [("start", "replay", 0, 0), ("start", "replay", 1, STATUS_INVALID_PARAMETER),
         ("failure", "replay", 0, 0), ("start", "hotadd", 1, 0)]),
    "no veto": (
        VetoPolicy(index=NO_VETO, status=STATUS_INSUFFICIENT_RESOURCES),
        [("start", "replay", 0, 0), ("complete", "replay", 0, 0), ("start", "hotadd", 1, 0),
         ("failure", "hotadd", 1, 0)]),
}


@pytest.mark.parametrize("case", list(VETO_CASES))
def test_veto_policy_fails_only_the_named_start(harness: RingHarness, case: str) -> None:
    policy, steps = VETO_CASES[case]
    lines = [spec("notify", state=state, phase=phase, nt=nt, op=0xDEAD)
             for state, phase, nt, _ in steps]
    records = parse_lines(harness.records(lines, veto=policy))
    assert [r["op_status"] for r in records] == [op for *_, op in steps]


@pytest.mark.parametrize("flavour", ["asan", "tsan"])
def test_simultaneous_hot_add_starts_get_exactly_one_veto(
        harness: RingHarness, tsan_harness: RingHarness, flavour: str) -> None:
    binary = harness if flavour == "asan" else tsan_harness
    assert binary.veto_race(threads=8) == 1


@pytest.mark.parametrize(("ticks", "frequency"), [
    (0, 10_000_000), (1, 10_000_000), (12_345_678_901, 10_000_000),
    (10_000_000 * 86_400 * 365, 10_000_000),            # a year at the usual 10 MHz
    (3_000_000_000 * 3_600 * 24 * 30, 3_000_000_000),   # a month of a 3 GHz TSC
    (2**63, 18_000_000_000),                          # the documented bound: < 18 GHz
    (999, 1), (1, 3),
])
def test_tick_conversion_is_exact_and_does_not_overflow(harness: RingHarness, ticks: int,
                                                        frequency: int) -> None:
    assert harness.ticks_to_ns(ticks, frequency) == ticks * 1_000_000_000 // frequency


def test_tick_conversion_with_no_frequency_is_zero(harness: RingHarness) -> None:
    assert harness.ticks_to_ns(5, 0) == 0


def test_api_refuses_bad_capacities_and_short_buffers(harness: RingHarness) -> None:
    assert harness.limits() == {
        "init_capacity_3": 0, "init_capacity_1": 0, "init_no_clock": 0, "init_no_frequency": 0,
        "init_capacity_4": 1,
        "format_small_buffer": 0, "format_exact_buffer_ok": 1, "format_unknown_kind": 0,
        "format_unknown_event": 0, "drain_small_buffer": 0,
    }


def test_event_numbers_match_the_public_header() -> None:
    header = (Path(__file__).resolve().parents[2] / "driver" / "recorder"
              / "probe_public.h").read_text()
    assert "HapEventLoad = 1," in header
    order = ["HapEventLoad", "HapEventRegistered", "HapEventRegisterFailed",
             "HapEventDeregistered", "HapEventUnload", "HapEventDropped"]
    positions = [header.index(name) for name in order]
    assert positions == sorted(positions)
    assert list(DRIVER_EVENTS.values()) == list(range(1, len(order) + 1))

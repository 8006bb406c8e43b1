"""The probe's records blame the probe only for what it did (issue 12): time order by
construction, op_status_in beside op_status, losses in the file written in-band.

The driver's own portable code (probe_ring.c, probe_core.c, probe_format.c) runs in
driver/tests/ring_harness.c under ASan/UBSan and, where threads race, ThreadSanitizer.
"""

from __future__ import annotations

from typing import Any

import pytest

from harness.oracle import Profile, check
from harness.oracle.model import STATUS_INSUFFICIENT_RESOURCES
from harness.records import parse_records
from tests.support.driver_toolchain import (
    RingHarness,
    VetoPolicy,
    assert_seq_complete,
    parse_lines,
    spec,
)

VETO = STATUS_INSUFFICIENT_RESOURCES




# ---- time order ------------------------------------------------------------------------

def test_a_producer_stalled_while_reading_the_clock_cannot_write_back_in_time(
        threaded: RingHarness) -> None:
    """Producer 1 reads the clock (tick 1) and stalls there until producer 2 has appended
    (tick 2). Taking the time before claiming the slot (the old HapAppend) wrote tick 1 after
    tick 2; the ring now reads the clock between seeing its slot free and claiming it, so the
    stalled producer loses the slot, reads again (tick 3) and lands after."""
    records = parse_lines(threaded.interleave())
    assert [(r["nt_number"], r["t_ns"]) for r in records] == [(2, 2), (1, 3)]
    assert not [r for r in records if "t_raw_ns" in r]


def test_a_time_below_the_last_line_is_raised_and_the_reading_kept(
        harness: RingHarness) -> None:
    """Belt and braces for a clock that is not consistent across processors: the file's t_ns
    still never goes back, and the reading is not hidden."""
    lines = [spec("driver", event="load", t=0, active=1, flags=0),
             spec("driver", event="registered", t=10),
             spec("notify", state="start", phase="hotadd", t=500, nt=1, number=1, active=1),
             spec("notify", state="complete", phase="hotadd", t=400, nt=1, number=1, active=2),
             spec("driver", event="deregistered", t=600),
             spec("driver", event="unload", t=700)]
    output = harness.records(lines)
    records = parse_lines(output)
    assert [r["t_ns"] for r in records] == [0, 10, 500, 500, 600, 700]
    assert [r.get("t_raw_ns") for r in records] == [None, None, None, 400, None, None]
    verdict = check(parse_records(output.splitlines()), Profile.WINDOWS)
    assert verdict.passed and not verdict.findings


# ---- op_status_in ----------------------------------------------------------------------

def test_op_status_is_the_probes_write_and_op_status_in_what_it_found(
        harness: RingHarness) -> None:
    """A replay veto of processor 2: the kernel rolls back 0 and 1 with Failure and (as it
    may) leaves the veto status in *OperationStatus. The old record held *OperationStatus
    after the callback, so those Failures said op_status = the veto, and the oracle failed
    the probe (op_status.only_on_start) for a value it never wrote."""
    steps = [("start", 0, 0), ("start", 1, 0), ("start", 2, 0),
             ("failure", 0, VETO), ("failure", 1, VETO)]
    lines = [spec("driver", event="load", t=0, active=3, flags=1)]
    lines += [spec("notify", t=(i + 1) * 10, state=state, phase="replay", nt=nt, number=nt,
                   active=3, irql=1, op_in=op_in, status=VETO if state == "failure" else 0,
                   map_status=0, map_number=nt)
              for i, (state, nt, op_in) in enumerate(steps)]
    lines += [spec("driver", event="register_failed", t=100, status=VETO),
              spec("driver", event="unload", t=110)]
    output = harness.records(lines, veto=VetoPolicy(index=2, status=VETO, during_replay=True))
    notifies = [r for r in parse_lines(output) if r["kind"] == "notify"]
    assert [(r["op_status"], r["op_status_in"]) for r in notifies] == [
        (0, 0), (0, 0), (VETO, 0), (0, VETO), (0, VETO)]
    verdict = check(parse_records(output.splitlines()), Profile.WINDOWS)
    assert verdict.passed
    assert {f.rule_id for f in verdict.findings} == {"op_status.found_on_entry"}
    assert {f.seqs for f in verdict.findings} == {(5,), (6,)}


# ---- losses when writing the file --------------------------------------------------------

def _adds(count: int) -> list[str]:
    return [spec("driver", event="load", t=0, active=1, flags=0)] + [
        spec("notify", state="start", phase="hotadd", t=10 * (i + 1), nt=i + 1, number=i + 1,
             active=1) for i in range(count)]


def _account(records: list[dict[str, Any]], appended: int) -> list[dict[str, Any]]:
    """Every appended record is in the file or counted by a `dropped` line; the file is whole
    lines, seq without gaps, time order kept; returns the dropped lines."""
    assert_seq_complete(records)
    times = [r["t_ns"] for r in records]
    assert times == sorted(times)
    dropped = [r for r in records if r.get("event") == "dropped"]
    kept = [r for r in records if r.get("event") != "dropped"]
    assert len(kept) + sum(r["count"] for r in dropped) == appended
    return dropped


def test_a_whole_file_when_every_write_succeeds(harness: RingHarness) -> None:
    clean = harness.write_faults(_adds(40), [], drain_every=10)
    assert clean == harness.records(_adds(40), drain_every=10)


def test_a_short_write_is_resumed_where_it_stopped(harness: RingHarness) -> None:
    clean = harness.write_faults(_adds(40), [], drain_every=10)
    assert harness.write_faults(_adds(40), ["100", "7", "-", "1"], drain_every=10) == clean


def test_a_failed_write_is_a_dropped_line_not_a_silent_gap(harness: RingHarness) -> None:
    # Drained every 10 appends: the 2nd write (records 11-20) fails outright.
    records = parse_lines(harness.write_faults(_adds(40), ["-", "E"], drain_every=10))
    dropped = _account(records, 41)
    assert [(d["seq"], d["count"]) for d in dropped] == [(11, 10)]
    # The lost lines gave their seq back: the line after the report is record 21 (nt 20).
    assert records[11]["nt_number"] == 20


@pytest.mark.parametrize("faults", [["-", "e150"], ["-", "e150", "E"], ["-", "100", "e3"]],
                         ids=["torn-then-ok", "torn-twice", "short-then-torn"])
def test_a_torn_line_is_overwritten_by_the_loss_report(harness: RingHarness,
                                                       faults: list[str]) -> None:
    records = parse_lines(harness.write_faults(_adds(40), faults, drain_every=10))
    assert _account(records, 41)


def test_a_failure_in_the_final_flush_is_reported_and_the_torn_tail_cut(
        harness: RingHarness) -> None:
    # 3 writes in all without faults (2 drains + the final one); the final one breaks.
    output = harness.write_faults(_adds(25), ["-", "-", "e60"], drain_every=10)
    records = parse_lines(output)
    assert output.endswith("\n")
    dropped = _account(records, 26)
    assert records[-1] == dropped[-1] and dropped[-1]["count"] == 6


def test_a_file_that_refuses_everything_keeps_only_whole_lines(harness: RingHarness) -> None:
    output = harness.write_faults(_adds(25), ["-", *["e40"] * 20], drain_every=10)
    assert output.endswith("\n")
    records = parse_lines(output)
    assert_seq_complete(records)
    assert len(records) == 10  # the first chunk; nothing after it could be written

"""The recorder (driver/recorder/): what a developer's driver compiles in to write its own
records stream. Its portable part is the probe's own (ring, formatter, writer, registration
and callback decisions, all run under the sanitizers by the other tests here); this file
covers what the recorder adds: a writer's file name, and a lifecycle without a veto policy
(the records a developer's callback gets) judged by the oracle. The kernel part
(recorder_wdm.c) and the example driver are type-checked and linked with mingw-w64 in
test_driver_wdm_compile.py; none of it has run on Windows."""

from __future__ import annotations

import pytest

from harness.oracle import HostFacts, Profile, check
from harness.records import parse_records
from tests.support.driver_toolchain import RingHarness


@pytest.mark.parametrize(("name", "expected"), [
    ("MyDriver", "records-MyDriver.jsonl"),
    ("a", "records-a.jsonl"),
    ("ebpf_core-2", "records-ebpf_core-2.jsonl"),
    ("x" * 48, f"records-{'x' * 48}.jsonl"),
    ("x" * 49, "invalid"),
    ("", "invalid"),
    ("..", "invalid"),
    ("a/b", "invalid"),
    ("a\\b", "invalid"),
    ("with space", "invalid"),
    ("caf\u00e9", "invalid"),
    ("records.jsonl", "invalid"),
])
def test_a_writer_name_makes_its_own_file_or_is_refused(harness: RingHarness, name: str,
                                                        expected: str) -> None:
    assert harness.writer_file(name) == expected


def test_the_file_name_needs_room_for_its_nul(harness: RingHarness) -> None:
    needed = len("records-abc.jsonl") + 1
    assert harness.writer_file("abc", needed) == "records-abc.jsonl"
    assert harness.writer_file("abc", needed - 1) == "invalid"


@pytest.mark.parametrize("when", ["none", "mid", "after"])
def test_a_recorder_without_veto_writes_a_stream_the_oracle_passes(
        harness: RingHarness, when: str) -> None:
    """The lifecycle a developer's driver records through the recorder (load, the register
    call with its replay and maybe a hot-add on another thread, deregistered, unload), through
    the same ring and formatter, passes the oracle as the probe's does."""
    text = harness.register_window(3, when)
    records = parse_records(text.splitlines())
    adds = 0 if when == "none" else 1
    verdict = check(records, Profile.WINDOWS, HostFacts(adds_performed=adds,
                                                        adds_expected_ok=adds, boot_cpus=3))
    assert verdict.passed, [f.message for f in verdict.findings]

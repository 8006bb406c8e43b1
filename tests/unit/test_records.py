"""Record format v1: parsing into typed records, input errors with file:line, writing back."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from harness.errors import InputError
from harness.records import (
    DriverEvent,
    DriverRecord,
    NotifyRecord,
    NotifyState,
    Phase,
    dump_records,
    parse_records,
    read_records,
)

TRACES = Path(__file__).resolve().parents[1] / "data" / "traces"

LOAD = {"v": 1, "seq": 1, "t_ns": 0, "kind": "driver", "event": "load", "active_count": 2,
        "flags": 1}
START = {"v": 1, "seq": 2, "t_ns": 1500, "kind": "notify", "state": "start", "phase": "hotadd",
         "nt_number": 2, "group": 0, "number": 2, "status": 0, "op_status": 3221225626,
         "active_count": 2, "irql": 0}
NOTIFY_FIELDS = ("v", "seq", "t_ns", "kind", "state", "phase", "nt_number", "group", "number",
                 "status", "op_status", "active_count", "irql")


def lines(*objects: dict[str, Any]) -> list[str]:
    return [json.dumps(o) for o in objects]


def parse_error(*raw: str) -> str:
    with pytest.raises(InputError) as caught:
        parse_records(list(raw))
    return str(caught.value)


def test_parses_into_typed_records() -> None:
    load, start = parse_records(lines(LOAD, START))
    assert load == DriverRecord(seq=1, t_ns=0, event=DriverEvent.LOAD, active_count=2, flags=1)
    assert start == NotifyRecord(seq=2, t_ns=1500, state=NotifyState.START, phase=Phase.HOTADD,
                                 nt_number=2, group=0, number=2, status=0,
                                 op_status=0xC000009A, active_count=2, irql=0)
    assert (load.line, start.line) == (1, 2)


def test_unknown_fields_are_kept_and_written_back() -> None:
    extra = {**START, "cpu_vendor": "GenuineIntel", "apic": [1, 2]}
    (record,) = parse_records(lines(extra))
    assert dict(record.extra) == {"cpu_vendor": "GenuineIntel", "apic": [1, 2]}
    assert json.loads(dump_records([record])) == extra


def test_round_trip_of_every_sample_trace() -> None:
    for path in sorted(TRACES.glob("[wlc]*.jsonl")):
        records = read_records(path)
        text = dump_records(records)
        assert parse_records(text.splitlines()) == records, path.name
        original = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        assert [json.loads(x) for x in text.splitlines()] == original, path.name


def test_dump_is_one_compact_line_per_record_with_common_fields_first() -> None:
    text = dump_records(parse_records(lines(LOAD, START)))
    assert text.endswith("\n") and text.count("\n") == 2
    first = text.splitlines()[0]
    assert first.startswith('{"v":1,"seq":1,"t_ns":0,"kind":"driver","event":"load"')
    assert " " not in first


def test_blank_lines_are_skipped_but_counted() -> None:
    raw = ["", json.dumps(LOAD), "   ", json.dumps({**START, "irql": "0"})]
    assert "<lines>:4:" in parse_error(*raw)
    assert len(parse_records(raw[:3])) == 1


@pytest.mark.parametrize("name", NOTIFY_FIELDS)
def test_missing_notify_field_is_an_input_error(name: str) -> None:
    broken = {k: v for k, v in START.items() if k != name}
    message = parse_error(json.dumps(LOAD), json.dumps(broken))
    assert message.startswith("<lines>:2: ")
    assert f'"{name}"' in message
    assert "fix:" in message


@pytest.mark.parametrize(("event", "name"), [("load", "active_count"), ("load", "flags"),
                                             ("register_failed", "status"), ("dropped", "count")])
def test_missing_driver_field_is_an_input_error(event: str, name: str) -> None:
    record = {"v": 1, "seq": 1, "t_ns": 0, "kind": "driver", "event": event,
              "active_count": 1, "flags": 0, "status": 0xC0000001, "count": 1}
    del record[name]
    message = parse_error(json.dumps(record))
    assert f'missing required field "{name}"' in message and event in message


@pytest.mark.parametrize(("field", "value", "why"), [
    ("nt_number", "2", "must be an integer"),
    ("status", True, "must be an integer"),
    ("irql", 1.0, "must be an integer"),
    ("seq", -1, "outside 0.."),
    ("number", 256, "outside 0..255"),
    ("group", 65536, "outside 0..65535"),
    ("status", 2**32, "outside 0..4294967295"),
    ("state", "begin", "not one of: start, complete, failure"),
    ("phase", "boot", "not one of: replay, hotadd"),
    ("kind", "trace", "not one of: driver, notify"),
    ("v", 2, "unsupported format version"),
    ("v", True, "unsupported format version"),
    ("v", 1.0, "unsupported format version"),
])
def test_ill_typed_field_is_an_input_error(field: str, value: Any, why: str) -> None:
    message = parse_error(json.dumps({**START, field: value}))
    assert message.startswith("<lines>:1: ") and why in message


DROPPED = {"v": 1, "seq": 17, "t_ns": 81234567, "kind": "driver", "event": "dropped",
           "count": 3}


def test_a_dropped_line_is_a_driver_record_with_its_count() -> None:
    """The Windows driver's report of records lost to a full ring (driver/recorder/probe_ring.c)."""
    (record,) = parse_records(lines(DROPPED))
    assert record == DriverRecord(seq=17, t_ns=81234567, event=DriverEvent.DROPPED, count=3)
    assert json.loads(dump_records([record])) == DROPPED
    biggest = {**DROPPED, "count": 2**64 - 1}  # the driver's counter is 64-bit
    assert parse_records(lines(biggest))[0] == DriverRecord(
        seq=17, t_ns=81234567, event=DriverEvent.DROPPED, count=2**64 - 1)


@pytest.mark.parametrize(("count", "why"), [
    (0, 'field "count" = 0 is outside 1..18446744073709551615'),
    (2**64, "outside 1..18446744073709551615"),
    ("3", "must be an integer"),
    (True, "must be an integer"),
])
def test_a_dropped_line_needs_a_positive_count(count: Any, why: str) -> None:
    message = parse_error(json.dumps(LOAD), json.dumps({**DROPPED, "count": count}))
    assert message.startswith("<lines>:2: ") and why in message


def test_driver_event_is_validated() -> None:
    assert "not one of: load, registered" in parse_error(json.dumps({**LOAD, "event": "boot"}))


@pytest.mark.parametrize(("raw", "why"), [
    ('{"v":1,"seq":1', "not JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"seq":1}', 'missing required field "v"'),
])
def test_non_record_lines_are_input_errors(raw: str, why: str) -> None:
    assert why in parse_error(raw)


def test_file_errors_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps(LOAD) + "\n" + '{"v":1,"seq":2,"t_ns":3,"kind":"driver"}\n')
    with pytest.raises(InputError, match=re.escape(f'{path}:2: missing required field "event"')):
        read_records(path)
    with pytest.raises(InputError, match=r"missing_field\.jsonl:3: .*op_status"):
        read_records(TRACES / "malformed_missing_field.jsonl")


def test_missing_and_binary_files_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"cannot read records file .*nope\.jsonl"):
        read_records(tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match="is a directory"):
        read_records(tmp_path)
    binary = tmp_path / "records.bin"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InputError, match="not UTF-8"):
        read_records(str(binary))


def test_path_string_and_line_iterables_parse_the_same() -> None:
    path = TRACES / "win_hotadd_veto.jsonl"
    assert read_records(str(path)) == parse_records(path.read_text().splitlines())


def test_text_is_never_taken_for_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Text and paths are separate entry points: an empty string is no records, not ".", and a
    string naming a file is a (bad) record line, not that file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "records.jsonl").write_text(json.dumps(LOAD) + "\n")
    assert parse_records("") == []
    with pytest.raises(InputError, match="<lines>:1: not JSON"):
        parse_records("records.jsonl")


def test_a_string_of_records_is_read_as_text_not_as_a_path() -> None:
    text = (TRACES / "win_hotadd_veto.jsonl").read_text()
    assert parse_records(text) == read_records(TRACES / "win_hotadd_veto.jsonl")
    assert len(parse_records(json.dumps(LOAD))) == 1
    with pytest.raises(InputError, match='<lines>:2: missing required field "v"'):
        parse_records(json.dumps(LOAD) + "\n" + "{}\n")

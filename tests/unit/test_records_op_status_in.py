"""`op_status_in` (record format v1, optional): parsed, validated, written back; old files
without it stay valid; the oracle reports a non-zero value as an observation only."""

from __future__ import annotations

from dataclasses import replace

import pytest

from harness.errors import InputError
from harness.oracle import Profile, Severity, check
from harness.oracle.model import STATUS_INSUFFICIENT_RESOURCES, HotAdd, ProtocolModel
from harness.records import NotifyRecord, NotifyState, Record, dump_records, parse_records

VETO = STATUS_INSUFFICIENT_RESOURCES
NOTIFY = ('{"v":1,"seq":2,"t_ns":5,"kind":"notify","state":"start","phase":"hotadd",'
          '"nt_number":1,"group":0,"number":1,"status":0,"op_status":0,"active_count":1,'
          '"irql":0')


def test_a_file_written_before_the_field_existed_still_parses() -> None:
    (record,) = parse_records([NOTIFY + "}"])
    assert isinstance(record, NotifyRecord) and record.op_status_in is None
    assert "op_status_in" not in dump_records([record])


def test_the_field_is_parsed_and_written_back_after_op_status() -> None:
    (record,) = parse_records([NOTIFY + f',"op_status_in":{VETO}' + "}"])
    assert isinstance(record, NotifyRecord) and record.op_status_in == VETO
    line = dump_records([record])
    assert '"op_status":0,"op_status_in":3221225626,"active_count"' in line
    assert parse_records(line) == [record]


@pytest.mark.parametrize("value", ['-1', '4294967296', '"0"', 'true'])
def test_a_bad_value_is_an_input_error_naming_the_field(value: str) -> None:
    with pytest.raises(InputError, match='op_status_in'):
        parse_records([NOTIFY + f',"op_status_in":{value}' + "}"])


def _with_found_veto(profile: Profile) -> list[Record]:
    """A vetoed hot-add whose Failure found the veto status still in *OperationStatus."""
    records = ProtocolModel(existing=2, hotadds=(HotAdd(veto=VETO), HotAdd()),
                            profile=profile).records()
    return [replace(r, op_status_in=VETO)
            if isinstance(r, NotifyRecord) and r.state is NotifyState.FAILURE else r
            for r in records]


def test_what_the_callback_found_is_an_observation_on_windows() -> None:
    verdict = check(_with_found_veto(Profile.WINDOWS), Profile.WINDOWS)
    assert verdict.passed
    assert [(f.rule_id, f.severity) for f in verdict.findings] == [
        ("op_status.found_on_entry", Severity.WARN)]


def test_the_linux_probe_must_always_write_zero() -> None:
    verdict = check(_with_found_veto(Profile.LINUX), Profile.LINUX)
    assert not verdict.passed
    assert {f.rule_id for f in verdict.findings} == {"op_status.found_on_entry"}


def test_the_probes_own_write_is_still_judged() -> None:
    records = ProtocolModel(existing=2, hotadds=(HotAdd(),)).records()
    complete = next(i for i, r in enumerate(records)
                    if isinstance(r, NotifyRecord) and r.state is NotifyState.COMPLETE
                    and r.nt_number == 2)
    record = records[complete]
    assert isinstance(record, NotifyRecord)
    records[complete] = replace(record, op_status=VETO)
    verdict = check(records, Profile.WINDOWS)
    assert {f.rule_id for f in verdict.findings} == {"op_status.only_on_start"}

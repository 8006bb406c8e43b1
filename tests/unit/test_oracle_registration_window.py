"""The registration window (issue 12): a hot-add that lands while the register call still
runs is labelled hotadd by the probe (by thread) and judged as a hot-add; one inside the replay
itself is reported; a register call refused before any replay is no replay failure."""

from __future__ import annotations

from dataclasses import replace

import pytest

from harness.oracle import HostFacts, Profile, check
from harness.oracle.model import HotAdd, ProtocolModel
from harness.records import DriverEvent, DriverRecord, NotifyRecord, Phase, Record

STATUS_INVALID_PARAMETER = 0xC000_000D


@pytest.mark.parametrize("profile", list(Profile))
@pytest.mark.parametrize("vetoed", [False, True])
def test_window_hot_adds_pass_like_any_hot_add(profile: Profile, vetoed: bool) -> None:
    adds = (HotAdd(veto=0xC000_009A) if vetoed else HotAdd(), HotAdd())
    model = ProtocolModel(existing=2, hotadds=adds, hotadds_in_window=1, profile=profile)
    records = model.records()
    registered = next(i for i, r in enumerate(records)
                      if isinstance(r, DriverRecord) and r.event is DriverEvent.REGISTERED)
    assert any(isinstance(r, NotifyRecord) and r.phase is Phase.HOTADD
               for r in records[:registered])
    verdict = check(records, profile, model.host_facts())
    assert verdict.passed and not verdict.findings, verdict.findings


def test_a_window_hot_add_the_old_probe_labelled_replay_still_fails() -> None:
    """What the flag-labelled probe wrote: the oracle must not guess it into a hot-add."""
    records = ProtocolModel(existing=2, hotadds=(HotAdd(),), hotadds_in_window=1).records()
    relabelled: list[Record] = [
        replace(r, phase=Phase.REPLAY) if isinstance(r, NotifyRecord) and r.nt_number == 2
        else r for r in records]
    verdict = check(relabelled, Profile.WINDOWS, HostFacts(adds_performed=1))
    assert not verdict.passed
    assert {"replay.starts", "host.adds"} <= {f.rule_id for f in verdict.findings}


def test_a_replay_label_after_the_register_call_returned_is_still_wrong() -> None:
    records = ProtocolModel(existing=2, hotadds=(HotAdd(),)).records()
    last_notify = max(i for i, r in enumerate(records) if isinstance(r, NotifyRecord))
    record = records[last_notify]
    assert isinstance(record, NotifyRecord)
    records[last_notify] = replace(record, phase=Phase.REPLAY)
    assert {f.rule_id for f in check(records, Profile.WINDOWS).findings} == {"phase.label"}


def test_a_register_call_refused_before_any_replay_is_no_replay_failure() -> None:
    records: list[Record] = [
        DriverRecord(seq=1, t_ns=0, event=DriverEvent.LOAD, active_count=2, flags=3),
        DriverRecord(seq=2, t_ns=1, event=DriverEvent.REGISTER_FAILED,
                     status=STATUS_INVALID_PARAMETER),
        DriverRecord(seq=3, t_ns=2, event=DriverEvent.UNLOAD)]
    verdict = check(records, Profile.WINDOWS, HostFacts(adds_performed=0, boot_cpus=2))
    assert verdict.passed and not verdict.findings, verdict.findings
    # A successful register call with ADD_EXISTING must still have replayed.
    registered = [records[0], DriverRecord(seq=2, t_ns=1, event=DriverEvent.REGISTERED)]
    assert "replay.starts" in {f.rule_id for f in check(registered, Profile.WINDOWS).findings}

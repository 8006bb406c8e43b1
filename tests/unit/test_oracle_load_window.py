"""Loading while hot-adds are in flight (`--load-during-adds`, issue 16 item 4): each add is
seen exactly once, in the replay (online before the register call) or as a hot-add, the
replay is not interleaved, and the host counts subtract what the replay covered. Every broken
trace here must fail."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from harness.oracle import HostFacts, Profile, Verdict, check
from harness.oracle.model import HotAdd, ProtocolModel, renumber
from harness.records import DriverEvent, DriverRecord, NotifyRecord, NotifyState, Phase, Record

W, L = Profile.WINDOWS, Profile.LINUX
START, COMPLETE = NotifyState.START, NotifyState.COMPLETE


def model(replayed: int, *, in_window: int = 0, profile: Profile = L,
          during: int = 2) -> ProtocolModel:
    """Two boot CPUs, two adds both started before the load; `replayed` of them online
    before the register call."""
    return ProtocolModel(existing=2, hotadds=(HotAdd(), HotAdd()), adds_during_load=during,
                         replayed_adds=replayed, hotadds_in_window=in_window, profile=profile)


def ids(verdict: Verdict) -> set[str]:
    return {f.rule_id for f in verdict.findings}


def failed(verdict: Verdict) -> set[str]:
    return {f.rule_id for f in verdict.findings if f.severity.value == "fail"}


def notify(records: Sequence[Record], state: NotifyState, phase: Phase, nt: int) -> int:
    return next(i for i, r in enumerate(records) if isinstance(r, NotifyRecord)
                and r.state is state and r.phase is phase and r.nt_number == nt)


@pytest.mark.parametrize("profile", list(Profile))
@pytest.mark.parametrize(("replayed", "in_window"), [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)])
def test_every_way_an_add_can_land_passes(profile: Profile, replayed: int,
                                          in_window: int) -> None:
    m = model(replayed, in_window=in_window, profile=profile)
    verdict = check(m.records(), profile, m.host_facts())
    assert verdict.passed and not verdict.findings, verdict.findings


def test_without_adds_in_flight_a_bigger_replay_still_fails() -> None:
    """The default keeps the old strictness: the replay must run with the load count."""
    m = model(1)
    verdict = check(m.records(), L, replace(m.host_facts(), adds_during_load=0))
    assert {"replay.active_at_registration", "replay.starts", "host.adds"} <= failed(verdict)
    assert "replay.active_at_registration" in ids(check(m.records(), L))  # no host facts


def test_a_replay_bigger_than_the_adds_in_flight_fails() -> None:
    m = model(2)
    verdict = check(m.records(), L, replace(m.host_facts(), adds_during_load=1))
    assert "replay.active_at_registration" in failed(verdict)


def test_a_replay_smaller_than_the_load_count_fails() -> None:
    records = model(0).records()
    records = [replace(r, active_count=1) if isinstance(r, NotifyRecord)
               and r.phase is Phase.REPLAY else r for r in records]
    assert "replay.active_at_registration" in failed(check(records, L, model(0).host_facts()))


def test_a_hot_add_inside_the_replay_fails() -> None:
    """W25/L10: an add whose online raced the registration comes after the replay's last
    record; its Start and Complete between the replay's Starts and Completes fail."""
    m = model(0, in_window=1)
    out = list(m.records())
    start, complete = notify(out, START, Phase.HOTADD, 2), notify(out, COMPLETE, Phase.HOTADD, 2)
    add = [out[start], out[complete]]
    del out[complete], out[start]
    first_replay_complete = notify(out, COMPLETE, Phase.REPLAY, 0)
    out[first_replay_complete:first_replay_complete] = add
    out = [replace(r, t_ns=i) for i, r in enumerate(renumber(out))]
    verdict = check(out, L, m.host_facts())
    assert "replay.not_interleaved" in failed(verdict)


def test_an_add_seen_twice_fails() -> None:
    """Replayed (online before the register call) and then notified as a hot-add too."""
    m = model(1)
    records = list(m.records())
    registered = next(i for i, r in enumerate(records)
                      if isinstance(r, DriverRecord) and r.event is DriverEvent.REGISTERED)
    t = records[registered].t_ns
    again = [NotifyRecord(seq=0, t_ns=t, state=state, phase=Phase.HOTADD, nt_number=2, group=0,
                          number=2, status=0, op_status=0, active_count=3 + (state is COMPLETE),
                          irql=0, op_status_in=0) for state in (START, COMPLETE)]
    records[registered + 1:registered + 1] = again
    verdict = check(renumber(records), L, m.host_facts())
    assert {"index.unused", "host.adds"} <= failed(verdict)
    assert any("seen twice" in f.message for f in verdict.findings if f.rule_id == "index.unused")


def test_an_add_seen_nowhere_fails() -> None:
    """Neither replayed nor notified: the replay ran with the boot CPUs, one hot-add only."""
    m = model(0)
    records = list(m.records())
    last = notify(records, START, Phase.HOTADD, 3)
    del records[last:last + 2]
    verdict = check(renumber(records), L, m.host_facts())
    assert {"host.adds", "host.completes", "host.final_count"} <= failed(verdict)


def test_an_add_the_replay_counted_but_skipped_fails() -> None:
    """The replay ran with 3 processors (one add came online first) but gave nt 2 nothing."""
    m = model(1)
    records = list(m.records())
    for state in (COMPLETE, START):
        del records[notify(records, state, Phase.REPLAY, 2)]
    verdict = check(renumber(records), L, m.host_facts())
    assert "replay.starts" in failed(verdict)


def test_a_load_count_beyond_the_adds_in_flight_fails() -> None:
    m = model(0)
    facts = HostFacts(adds_performed=2, adds_expected_ok=2, boot_cpus=1, guest_count=4,
                      adds_during_load=0)
    assert "host.boot_count" in failed(check(m.records(), L, facts))
    # an add online before the load record is allowed when it was in flight
    early = replace(m.host_facts(), boot_cpus=1, adds_during_load=2)
    assert "host.boot_count" not in ids(check(m.records(), L, early))


def test_windows_warns_where_linux_fails() -> None:
    m = model(1, profile=W)
    verdict = check(m.records(), W, replace(m.host_facts(), adds_during_load=0))
    found = [f for f in verdict.findings if f.rule_id == "replay.active_at_registration"]
    assert found and all(f.severity.value == "warn" for f in found)


def test_host_facts_refuse_more_adds_in_flight_than_performed() -> None:
    with pytest.raises(ValueError, match="adds_during_load"):
        HostFacts(adds_performed=1, adds_during_load=2)


def test_a_load_count_the_host_disputes_is_reported_once() -> None:
    """Without adds in flight, a load count above the boot vCPUs is host.boot_count's finding;
    the replay that matches the load count is not reported again."""
    m = ProtocolModel(existing=2, hotadds=(HotAdd(),), profile=L)
    verdict = check(m.records(), L, replace(m.host_facts(), boot_cpus=1, guest_count=2))
    assert "host.boot_count" in failed(verdict)
    assert "replay.active_at_registration" not in ids(verdict)

"""One add's wait: the guest's _OST and the probe's start + complete/failure are awaited at the
same time under one deadline. Driven by a fake clock that only the waiter's pauses move, so
what is measured is the waiter's own budget, not this machine's speed."""

from __future__ import annotations

from harness.host.events import OstEvent
from harness.observation import await_add
from harness.records import NotifyRecord, NotifyState, Phase


def notify(seq: int, state: NotifyState) -> NotifyRecord:
    return NotifyRecord(seq=seq, t_ns=seq * 1000, state=state, phase=Phase.HOTADD, nt_number=2,
                        group=0, number=2, status=0, op_status=0, active_count=2, irql=0)


OST = OstEvent(device="vcpu2", slot="2", slot_type="CPU", source=1, status=0, t_wall=0.0,
               received=0.0)


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def pause(self, seconds: float) -> None:
        self.now += seconds


def records_after(t: FakeTime, at: float) -> list[NotifyRecord]:
    if t.now < at:
        return []
    return [notify(7, NotifyState.START), notify(8, NotifyState.COMPLETE)]


def test_missing_ost_costs_one_timeout_while_records_are_polled() -> None:
    """Before: 60 s waiting for _OST alone, then the record wait on top."""
    t = FakeTime()
    polls: list[float] = []

    def records() -> list[NotifyRecord]:
        polls.append(t.now)
        return records_after(t, 3.0)

    ost, start, end = await_add(lambda: None, records, 60.0, lambda: None, clock=t.clock,
                                pause=t.pause)
    assert ost is None and start is not None and end is not None
    assert end.state is NotifyState.COMPLETE
    assert 60.0 <= t.now < 60.2, "one deadline for both"
    assert polls[0] == 0.0 and max(polls) < 3.2, "records were read while _OST was awaited"


def test_returns_as_soon_as_both_arrived() -> None:
    t = FakeTime()
    ost, _start, end = await_add(lambda: OST if t.now >= 1.0 else None,
                                 lambda: records_after(t, 2.5), 60.0, lambda: None,
                                 clock=t.clock, pause=t.pause)
    assert ost is OST and end is not None and 2.5 <= t.now < 2.7


def test_nothing_at_all_gives_up_at_the_deadline() -> None:
    t = FakeTime()
    ticks: list[float] = []
    assert await_add(lambda: None, list, 5.0, lambda: ticks.append(t.now), clock=t.clock,
                     pause=t.pause) == (None, None, None)
    assert 5.0 <= t.now < 5.2 and len(ticks) >= 49

"""What a --load-during-adds run reports of the registration window (`LoadWindow`), read from
the records the protocol model writes for each way the adds can land, and the scenario option
as the spec and the pytest plugin take it (the matrix key: tests/unit/test_matrix.py)."""

from __future__ import annotations

import inspect

import pytest

from harness.errors import InputError
from harness.observation import LoadWindow, hotadd_episodes
from harness.oracle.model import HotAdd, ProtocolModel
from harness.oracle.rules import Profile
from harness.pytest_plugin import HotaddHelper
from harness.records import NotifyState
from harness.spec import ScenarioSpec


@pytest.mark.parametrize(("replayed", "in_window"), [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1)])
def test_the_window_counts_where_the_adds_landed(replayed: int, in_window: int) -> None:
    model = ProtocolModel(existing=1, hotadds=(HotAdd(),) * 3, adds_during_load=3,
                          replayed_adds=replayed, hotadds_in_window=in_window,
                          profile=Profile.LINUX)
    window = LoadWindow.observe(model.records(), boot=1, adds=3, load_sent_ms=5.0,
                                load_ms=700.0)
    assert (window.load_count, window.replay_count) == (1, 1 + replayed)
    assert window.replayed == window.replayed_in_window == replayed
    assert (window.hotadd_in_window, window.hotadd_after) == (in_window, 3 - replayed - in_window)
    assert window.in_flight_at_load == 3
    assert window.raced_registration == replayed + in_window
    d = window.to_dict()
    assert d["in_flight_at_load"] == 3 and d["replayed"] == replayed
    episodes = hotadd_episodes(model.records())
    assert [s.nt_number for s, _ in episodes] == list(range(1 + replayed, 4))
    assert all(e is not None and e.state is NotifyState.COMPLETE for _, e in episodes)


def test_an_add_online_before_the_load_record_is_not_in_flight() -> None:
    """The load record already counts it (the guest was quicker than the load)."""
    model = ProtocolModel(existing=2, hotadds=(HotAdd(),))
    window = LoadWindow.observe(model.records(), boot=1, adds=2, load_sent_ms=1.0,
                                load_ms=1.0)
    assert window.online_before_load == 1 and window.in_flight_at_load == 1
    assert window.replayed == 1 and window.hotadd_after == 1


def test_the_spec_takes_the_option_and_refuses_what_it_cannot_honour() -> None:
    assert ScenarioSpec(load_during_adds=True).load_during_adds
    # an add after the unload is independent of the load: honoured
    assert ScenarioSpec(load_during_adds=True, adds=1, add_after_unload=True).add_after_unload
    with pytest.raises(InputError, match="no add"):
        ScenarioSpec(load_during_adds=True, adds=0)


def test_the_plugin_run_takes_the_option() -> None:
    assert inspect.signature(HotaddHelper.run).parameters["load_during_adds"].default is False


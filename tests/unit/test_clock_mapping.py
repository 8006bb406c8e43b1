"""The clock mapping: round trips bound the offset between the probe's clock and the host's."""

from __future__ import annotations

import pytest

from harness.clock import ClockSample, map_clock

TRUE_OFFSET = 1_800_000_000.0  # host Unix time of the probe's t_ns == 0


def sample(sent_after_load: float, answer_at: float, received_after_load: float) -> ClockSample:
    """A round trip where the guest read its clock `answer_at` s after load."""
    return ClockSample(TRUE_OFFSET + sent_after_load, answer_at, TRUE_OFFSET + received_after_load)


def test_the_offset_lies_within_the_stated_uncertainty_and_that_is_half_the_overlap() -> None:
    samples = [sample(1.000, 1.004, 1.010), sample(1.020, 1.0215, 1.030),
               sample(1.040, 1.047, 1.048)]
    mapping = map_clock(samples)
    assert mapping is not None and mapping.consistent
    assert abs(mapping.offset - TRUE_OFFSET) <= mapping.uncertainty_s
    # brackets [-0.004, +0.006], [-0.0015, +0.0085], [-0.007, +0.001] overlap in [-0.0015, 0.001]
    assert mapping.uncertainty_s == pytest.approx(0.00125, abs=1e-6)
    assert mapping.round_trip_s == pytest.approx(0.008, abs=1e-6)


def test_a_slow_round_trip_alone_gives_a_wide_bound() -> None:
    mapping = map_clock([sample(0.0, 0.3, 0.9)])  # the load: insmod took 0.9 s
    assert mapping is not None and mapping.uncertainty_s == pytest.approx(0.45, abs=1e-6)
    assert abs(mapping.offset - TRUE_OFFSET) <= mapping.uncertainty_s


def test_disagreeing_round_trips_fall_back_to_the_narrowest_and_say_so() -> None:
    jumped = ClockSample(TRUE_OFFSET + 5.0, 1.0, TRUE_OFFSET + 5.002)  # guest clock 4 s behind
    mapping = map_clock([sample(1.0, 1.001, 1.004), jumped])
    assert mapping is not None and not mapping.consistent
    assert mapping.uncertainty_s == pytest.approx(0.001, abs=1e-6)


def test_no_round_trips_no_mapping() -> None:
    assert map_clock([]) is None

"""A harness error names the stage it ended, and what that stage was waiting for (how a hung
add says where it hung, on any guest)."""

from __future__ import annotations

import io
import time

import pytest

from harness.errors import GuestWedged, InputError
from harness.progress import Progress


def test_an_error_is_labelled_with_the_innermost_stage_and_its_wait() -> None:
    progress = Progress(stream=io.StringIO())
    with pytest.raises(GuestWedged) as info, progress.stage("run"), progress.stage("add 2"):
        progress.waiting("add 2", "ACPI _OST", time.monotonic())
        raise GuestWedged("guest is wedged", "read the serial log")
    assert info.value.stage == "add 2, waiting for ACPI _OST"
    assert "add 2" in progress.timings and "run" in progress.timings


def test_a_stage_that_waited_for_nothing_is_named_alone() -> None:
    progress = Progress(stream=io.StringIO())
    with pytest.raises(InputError) as info, progress.stage("load"):
        raise InputError("bad", "fix it")
    assert info.value.stage == "load"

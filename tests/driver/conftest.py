"""Fixtures of the driver host tests: the ring harness built once per session, under
AddressSanitizer + UBSan and under ThreadSanitizer (tests/support/driver_toolchain.py)."""

from __future__ import annotations

import pytest

from tests.support.driver_toolchain import RingHarness, build_ring_harness


@pytest.fixture(scope="session")
def harness(tmp_path_factory: pytest.TempPathFactory) -> RingHarness:
    return build_ring_harness(tmp_path_factory.mktemp("driver-asan"))


@pytest.fixture(scope="session")
def tsan_harness(tmp_path_factory: pytest.TempPathFactory) -> RingHarness:
    return build_ring_harness(tmp_path_factory.mktemp("driver-tsan"), sanitizer="thread")


@pytest.fixture(params=["asan", "tsan"])
def threaded(request: pytest.FixtureRequest, harness: RingHarness,
             tsan_harness: RingHarness) -> RingHarness:
    """The harness for a test with threads: once under ASan/UBSan, once under TSan."""
    return harness if request.param == "asan" else tsan_harness

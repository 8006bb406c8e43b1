"""The host capacity gate between real processes: a lease that does not fit waits until a
holder lets go (released or killed), and never before. Synchronised by the processes' own
output lines, not by time."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.errors import InputError
from harness.host import capacity
from harness.host.capacity import Capacity, lease
from tests.support.capacity_holder import HolderProcess as Holder


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOTADD_CACHE_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    started: list[Holder] = []
    yield started
    for h in started:
        h.close()


def test_a_lease_that_does_not_fit_waits_until_the_holder_releases(
        cache: Path, holders: list[Holder]) -> None:
    a = Holder(2, 512, "a")
    holders.append(a)
    assert a.line() == "held"
    b = Holder(1, 512, "b")  # 2 + 1 vCPUs > 2
    holders.append(b)
    assert b.line() == "waiting a"
    assert a.release() == "released"
    assert b.line() == "held"  # only now: its first line said it was waiting behind a
    assert b.release() == "released"
    assert list((cache / "capacity" / "lab" / "holders").iterdir()) == []


def test_leases_that_fit_together_are_held_at_once(cache: Path, holders: list[Holder]) -> None:
    a, b = Holder(1, 512, "a"), Holder(1, 512, "b")
    holders += [a, b]
    assert a.line() == "held"
    assert b.line() == "held"  # never waited: 1 + 1 of 2 vCPUs, 512 + 512 of 1024 MiB
    memory = Holder(1, 64, "c", total=(4, 1024))  # vCPUs would fit; memory does not
    holders.append(memory)
    assert memory.line() == "waiting a,b"
    # whichever holder lets go, the waiter wakes: release the one whose file sorts last
    files = sorted((cache / "capacity" / "lab" / "holders").glob("*.json"))
    last = json.loads(files[-1].read_text())["label"]
    assert {"a": a, "b": b}[last].release() == "released"
    assert memory.line() == "held"


def test_a_killed_holder_leaks_no_capacity(cache: Path, holders: list[Holder]) -> None:
    a = Holder(2, 1024, "a")
    holders.append(a)
    assert a.line() == "held"
    a.proc.send_signal(signal.SIGKILL)  # a crashed worker: no release, its file stays
    a.proc.wait()
    assert len(list((cache / "capacity" / "lab" / "holders").iterdir())) == 1
    b = Holder(2, 1024, "b")
    holders.append(b)
    assert b.line() == "held"  # at once: the dead holder's flock went with its process
    assert len(list((cache / "capacity" / "lab" / "holders").iterdir())) == 1  # b's own


def test_a_waiter_killed_while_waiting_takes_nothing(cache: Path,
                                                     holders: list[Holder]) -> None:
    a = Holder(2, 512, "a")
    holders.append(a)
    assert a.line() == "held"
    b = Holder(2, 512, "b")
    holders.append(b)
    assert b.line() == "waiting a"
    b.proc.kill()
    b.proc.wait()
    assert a.release() == "released"
    with lease("lab", Capacity(2, 1024), Capacity(2, 1024), "c") as held:
        assert held.label == "c"


def test_a_need_beyond_the_host_is_an_input_error(cache: Path) -> None:
    with pytest.raises(InputError, match="needs 3 vCPUs and 512 MiB but the host offers 2"), \
            lease("lab", Capacity(2, 1024), Capacity(3, 512), "big"):
        pass
    assert capacity.gate_dir("lab").is_dir()


def test_host_capacity_is_validated() -> None:
    with pytest.raises(InputError, match="too small"):
        Capacity(0, 1024)

"""Warm starts through the real CLI: the first `hotadd run` for a guest boots it and saves it,
later runs restore it; the restored guest is a fresh one (new forward port and owner, no probe
state, a clock mapping with its measured bound); a changed input makes a new key; `--cold`
boots and leaves the store alone."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.host.saved import SavedStore
from tests.support.processes import qemu_pids_mentioning, run_hotadd, short_root

pytestmark = pytest.mark.vm

Run = tuple[int, dict[str, Any], Path, str]


def _run(uri: str, run_dir: Path, *args: str) -> Run:
    proc = run_hotadd("run", "--libvirt-uri", uri, "--run-dir", str(run_dir), "--json",
                      "--quiet", *args)
    result = json.loads((run_dir / "result.json").read_text())
    return proc.returncode, result, run_dir, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("saved")
    old = os.environ.get("HOTADD_SAVED_DIR")
    os.environ["HOTADD_SAVED_DIR"] = str(path)  # the CLI subprocesses inherit it
    yield path
    if old is None:
        del os.environ["HOTADD_SAVED_DIR"]
    else:
        os.environ["HOTADD_SAVED_DIR"] = old


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, store_dir: Path) -> dict[str, Run]:
    base = tmp_path_factory.mktemp("warm")
    out: dict[str, Run] = {}
    with short_root() as root:
        uri = f"qemu:///embed?root={root}"
        out["first"] = _run(uri, base / "first")
        out["entries_after_first"] = (0, {"n": len(SavedStore(store_dir).entries())}, base, "")
        out["second"] = _run(uri, base / "second")
        out["changed"] = _run(uri, base / "changed", "--boot-vcpus", "1")
        out["cold"] = _run(uri, base / "cold", "--cold")
    out["entries_at_end"] = (0, {"n": len(SavedStore(store_dir).entries())}, base, "")
    return out


def test_first_run_saves_the_guest_and_the_next_restores_it(runs: dict[str, Run]) -> None:
    for name in ("first", "second"):
        code, result, _, output = runs[name]
        assert code == 0 and result["outcome"] == "pass", output
    first, second = runs["first"][1], runs["second"][1]
    assert first["start"] == {"warm": True, "key": first["start"]["key"], "saved": True,
                              "note": ""}
    assert second["start"] == {"warm": True, "key": first["start"]["key"], "saved": False,
                               "note": ""}
    assert runs["entries_after_first"][1]["n"] == 1
    assert "restore" in second["timings_s"] and "boot" not in second["timings_s"]
    assert "start: warm" in (runs["second"][2] / "report.html").read_text()


def test_a_restored_guest_is_fresh(runs: dict[str, Run]) -> None:
    first_dir = runs["first"][2]
    second_dir = runs["second"][2]

    def forward_port(run_dir: Path) -> str:
        m = re.search(r"hostfwd=tcp:127\.0\.0\.1:(\d+)-:22", (run_dir / "domain.xml").read_text())
        assert m, "no forward in the live domain XML"
        return m.group(1)

    def owner(run_dir: Path) -> str:
        m = re.search(r"<hotadd:run [^>]*pid=['\"](\d+)", (run_dir / "domain.xml").read_text())
        assert m, "no owner metadata in the live domain XML"
        return m.group(1)

    # the SSH forward was rebuilt: no port of the saving run is carried over; the restoring
    # QEMU binds one of its own (port 0), which the run then reached its guest on
    assert forward_port(first_dir) == forward_port(second_dir) == "0"
    assert owner(first_dir) != owner(second_dir)  # the sweep sees the restoring run as owner
    # one probe load on the console and in the records: nothing from the saving run's load
    assert (second_dir / "serial.log").read_text(errors="replace").count('"event":"load"') == 1
    records = (second_dir / "records.jsonl").read_text().splitlines()
    assert json.loads(records[0])["event"] == "load"
    assert [json.loads(r)["seq"] for r in records] == list(range(1, len(records) + 1))


def test_the_clock_mapping_is_measured_and_its_bound_holds(runs: dict[str, Run]) -> None:
    for name in ("first", "second", "cold"):
        result = runs[name][1]
        clock = result["guest_clock"]
        assert clock["consistent"] and clock["samples"] > 1  # the probe's clock was read
        # the intersection of brackets is never wider than the fastest round trip
        assert clock["uncertainty_ms"] <= clock["round_trip_ms"] / 2 + 1e-3
        for add in result["adds"]:
            # the guest cannot see an add before the host made it: within the stated bound
            assert add["start_ms_approx"] >= -clock["uncertainty_ms"], (name, add, clock)
            assert add["end_ms_approx"] >= add["start_ms_approx"]


def test_a_changed_input_makes_a_new_key(runs: dict[str, Run]) -> None:
    code, changed, _, output = runs["changed"]
    assert code == 0, output
    assert changed["start"]["warm"] and changed["start"]["saved"]
    assert changed["start"]["key"] != runs["first"][1]["start"]["key"]


def test_cold_boots_and_leaves_the_store_alone(runs: dict[str, Run]) -> None:
    code, cold, _, output = runs["cold"]
    assert code == 0, output
    assert cold["start"] == {"warm": False, "key": None, "saved": False, "note": "--cold"}
    assert "boot" in cold["timings_s"] and "restore" not in cold["timings_s"]
    assert runs["entries_at_end"][1]["n"] == 2  # first's key and changed's key, no more


def test_two_runs_restoring_one_saved_guest_at_once_run_under_names_of_their_own(
        runs: dict[str, Run], tmp_path: Path) -> None:
    """Two runs restore the same saved guest at the same time, each in its own libvirt root
    (as two matrix workers do): both pass, and their domains do not share a name (an image
    restored as it is keeps the name it was saved under, for every run that restores it)."""
    key = runs["first"][1]["start"]["key"]
    with short_root() as root_a, short_root() as root_b:
        procs = {tag: subprocess.Popen(
            [sys.executable, "-m", "harness", "run", "--libvirt-uri", f"qemu:///embed?root={root}",
             "--run-dir", str(tmp_path / tag), "--json", "--quiet"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for tag, root in (("a", root_a), ("b", root_b))}
        output = {tag: proc.communicate(timeout=600)[0] for tag, proc in procs.items()}
    results = {tag: json.loads((tmp_path / tag / "result.json").read_text()) for tag in procs}
    for tag, result in results.items():
        assert procs[tag].returncode == 0 and result["outcome"] == "pass", output[tag]
        assert result["start"] == {"warm": True, "key": key, "saved": False, "note": ""}
        assert not qemu_pids_mentioning(f"guest={result['domain']},")
    assert results["a"]["domain"] != results["b"]["domain"]

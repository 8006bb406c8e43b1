"""A developer's module beside the probe, end to end through `hotadd run --with-module`: the
example module (vm/reference/example/) built against the guest kernel by the reference build.
Its good mode passes with its own records stream judged; its buggy mode (per-CPU state sized
by the CPUs online at load) faults on the first hot-added CPU, and the run says so: exit 1,
the add it happened in, and the module the oops blames."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.guests import reference
from harness.guests.reference import ReferenceImage
from tests.support.plugin_suite import Suite, suite
from tests.support.processes import run_hotadd

pytestmark = pytest.mark.vm
pytest_plugins = ["pytester"]
_ = suite  # the fixture, used by name


def run(cli_uri: str, run_dir: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    proc = run_hotadd("run", "--libvirt-uri", cli_uri, "--run-dir", str(run_dir), *args)
    return (proc.returncode, json.loads((run_dir / "result.json").read_text()),
            proc.stdout + proc.stderr)


def notifies(path: Path) -> list[tuple[str, str, int]]:
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    return [(r["phase"], r["state"], r["nt_number"]) for r in recs if r["kind"] == "notify"]


@pytest.mark.parametrize("order", ["after", "before"])
def test_good_mode_passes_with_its_own_stream_judged(
        cli_uri: str, tmp_path: Path, reference_image: ReferenceImage, order: str) -> None:
    ko = reference.example_module(reference_image)
    code, result, output = run(cli_uri, tmp_path / "run", "--with-module", str(ko),
                               "--with-module-param", "size_by=possible",
                               "--with-module-order", order)
    assert code == 0, output
    driver = result["driver"]
    assert driver["name"] == "hotadd_example" and driver["order"] == order
    assert [c["after"] for c in driver["checks"]] == ["load", "add 1", "add 2"]
    assert all(c["running"] for c in driver["checks"])
    [stream] = driver["streams"]
    assert stream["file"] == "records-hotadd_example.jsonl" and stream["verdict"]["passed"]
    assert notifies(tmp_path / "run" / stream["file"]) == [
        ("replay", "start", 0), ("replay", "start", 1),
        ("replay", "complete", 0), ("replay", "complete", 1),
        ("hotadd", "start", 2), ("hotadd", "complete", 2),
        ("hotadd", "start", 3), ("hotadd", "complete", 3)]
    assert "after add 2: hotadd_example loaded" in output
    assert "records of hotadd_example (records-hotadd_example.jsonl): PASS" in output
    assert result["verdict"]["passed"], "the probe's own stream is judged as always"


def test_buggy_mode_is_caught_and_named(cli_uri: str, tmp_path: Path,
                                        reference_image: ReferenceImage) -> None:
    ko = reference.example_module(reference_image)
    # loaded before the probe, its hotplug states come first (Linux hands out dynamic states
    # lowest first and runs them in order), so its fault stops the first add itself
    code, result, output = run(cli_uri, tmp_path / "run", "--with-module", str(ko),
                               "--with-module-param", "size_by=online",
                               "--with-module-order", "before")
    assert code == 1, output
    assert result["outcome"] == "fail" and result["failed_stage"].startswith("add 1")
    assert "crashed: oops" in result["error"]
    assert "the crash report blames hotadd_example (example_online)" in result["error"]
    assert result["driver"]["faulting_module"] == "hotadd_example (example_online)"
    # what its callback saw, up to the fault, is kept from the console
    assert notifies(tmp_path / "run" / "records-hotadd_example.jsonl")[-1] == (
        "hotadd", "complete", 2)
    assert "the crash report blames hotadd_example" in output


def test_the_hotadd_driver_fixture_loads_the_module_beside_the_probe(
        suite: Suite, reference_image: ReferenceImage) -> None:
    """`hotadd_driver(path, params)` in a user's test: the same flow as --with-module."""
    ko = reference.example_module(reference_image)
    suite.pytester.makepyfile(f"""
        def test_good(hotadd_driver):
            hotadd = hotadd_driver({str(ko)!r}, {{"size_by": "possible"}})
            result = hotadd.run(adds=1)
            assert result.passed, hotadd.explain(result)
            assert [c.after for c in result.driver.checks] == ["load", "add 1"]
            assert result.driver.streams[0].verdict.passed
    """)
    suite.run().assert_outcomes(passed=1)

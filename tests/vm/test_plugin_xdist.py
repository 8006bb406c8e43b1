"""The plugin's own fixtures under pytest-xdist (`pytest -n 2`, no matrix): each worker boots
its guest in a libvirt root of its own, and the session's report is the controller's, over
both workers' tests (a worker writing it would leave only its own tests in it)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness import paths
from harness.host.roots import qemu_pids_mentioning, workers_dir

pytest_plugins = ["pytester"]
REPO = Path(__file__).resolve().parents[2]
CACHE = paths.cache_dir()  # before pytester moves HOME: the guest build cache stays put


@pytest.mark.timeout(1200)
def test_two_workers_boot_their_own_guests_and_the_controller_reports_both(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOTADD_LIBVIRT_URI")  # the default root: each worker must take its own
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("HOTADD_CACHE_DIR", str(CACHE))
    pytester.makepyfile("""
        import os

        def test_one(hotadd, record_property):
            record_property("worker", os.environ["PYTEST_XDIST_WORKER"])
            assert hotadd.run(adds=1).passed

        def test_two(hotadd, record_property):
            record_property("worker", os.environ["PYTEST_XDIST_WORKER"])
            assert hotadd.run(adds=1).passed
    """)
    art, junit = pytester.path / "art", pytester.path / "j.xml"
    result = pytester.runpytest_subprocess(
        "-n", "2", "-p", "no:cacheprovider",
        "--hotadd-boot-vcpus", "1", "--hotadd-max-vcpus", "2", f"--hotadd-artifacts={art}",
        f"--junitxml={junit}", timeout=1100)
    result.assert_outcomes(passed=2)
    props = {tc.get("name"): {p.get("name"): p.get("value") for p in tc.iter("property")}
             for tc in ET.parse(junit).iter("testcase")}
    assert {p["worker"] for p in props.values()} == {"gw0", "gw1"}
    boots = sorted(p.name for p in art.iterdir() if p.name.startswith("_boot-"))
    assert len(boots) == 2  # one guest per worker, both under the controller's directory
    report = (art / "report.html").read_text()
    for name in ("test_one", "test_two"):
        assert name in report
        assert Path(props[name]["hotadd.test_dir"]).parent == art
        assert json.loads((Path(props[name]["hotadd.test_dir"]) / "test.json").read_text()
                          )["outcome"] == "passed"
    result.stdout.fnmatch_lines([f"hotadd: report {art / 'report.html'}"])
    assert not qemu_pids_mentioning(str(workers_dir()) + "/")

"""The pytest plugin's fixtures on the real reference guest under QEMU/libvirt: one boot per
session restored for every test, artifacts, JUnit properties, keep-on-failure, a guest that
never gets ready."""

from __future__ import annotations

import contextlib
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt

from harness import paths
from tests.support.plugin_suite import Suite, suite

pytest_plugins = ["pytester"]
_ = suite  # the fixture, used by name


def _properties(junit: Path) -> dict[str, dict[str, str]]:
    root = ET.parse(junit).getroot()
    return {case.get("name", ""): {p.get("name", ""): p.get("value", "")
                                   for p in case.iter("property")}
            for case in root.iter("testcase")}


def test_fixtures_artifacts_and_junit_properties_on_the_reference_guest(
        suite: Suite) -> None:
    """One booted guest serves every test, each restored to the saved state; results reach
    JUnit properties, per-test artifacts and the HTML report; a failing test leaves a
    screenshot."""
    suite.pytester.makepyfile("""
        def test_adds_one(hotadd, hotadd_guest):
            result = hotadd.run(adds=1)
            assert result.passed, hotadd.explain(result)
            assert hotadd_guest.processor_count() == 3

        def test_gets_the_saved_state_back(hotadd_guest):
            assert hotadd_guest.processor_count() == 2
            assert hotadd_guest.free_slots() == [2, 3]

        def test_probe_fixture_then_a_failing_assertion(hotadd_probe, hotadd):
            assert hotadd_probe.add().end_state == "complete"
            result = hotadd_probe.finish()
            assert result.passed, hotadd.explain(result)
            # judged on the one add made; the spec stays what was asked (no adds planned)
            assert result.spec.adds == 0 and result.performed.adds == 1
            assert False, "failing on purpose"
    """)
    art = suite.pytester.path / "art"
    junit = suite.pytester.path / "junit.xml"
    result = suite.run(f"--junitxml={junit}", f"--hotadd-artifacts={art}")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([f"hotadd: report {art / 'report.html'}"])
    result.stdout.fnmatch_lines(["E*AssertionError: failing on purpose"])  # nothing before it

    props = _properties(junit)
    one = props["test_adds_one"]
    assert one["hotadd.outcome"] == "pass" and one["hotadd.verdict"] == "pass"
    assert one["hotadd.findings"] == "0"
    assert one["hotadd.guest"].startswith("reference://hotadd-reference-")
    assert one["hotadd.add.1.end_state"] == "complete"
    assert 0 < float(one["hotadd.add.1.ost_ms"]) < float(one["hotadd.add.1.end_ms"])
    assert one["hotadd.add.1"].startswith("vCPU 2 -> CPU 2: complete")
    assert one["hotadd.version.libvirt"] and one["hotadd.version.qemu"]
    assert one["hotadd.version.accelerator"] in ("tcg", "kvm")
    assert float(one["hotadd.time.restore"]) < float(one["hotadd.time.total"])
    assert float(one["hotadd.time.add_1"]) > 0
    assert "hotadd.outcome" not in props["test_gets_the_saved_state_back"]  # no run, no verdict
    assert props["test_probe_fixture_then_a_failing_assertion"]["hotadd.verdict"] == "pass"

    boots = sorted(p.name for p in art.iterdir() if p.name.startswith("_boot-"))
    assert len(boots) == 1, boots  # booted once, restored for each test
    dirs = {p.name.split("-", 1)[1]: p for p in art.iterdir() if p.name.startswith("test_")}
    for name in ("test_adds_one", "test_probe_fixture_then_a_failing_assertion"):
        d = dirs[name]
        for artifact in ("serial.log", "domain.xml", "records.jsonl", "result.json",
                         "test.json"):
            assert (d / artifact).stat().st_size > 0, (name, artifact)
        assert json.loads((d / "result.json").read_text())["outcome"] == "pass"
    failing = dirs["test_probe_fixture_then_a_failing_assertion"]
    assert json.loads((failing / "result.json").read_text())["scenario"]["adds"] == 1
    assert json.loads((failing / "test.json").read_text())["outcome"] == "failed"
    assert (failing / "screenshot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (dirs["test_adds_one"] / "screenshot.png").exists()
    # each test's console: the boot, then what happened after its restore
    serial = (dirs["test_adds_one"] / "serial.log").read_text(errors="replace")
    assert "hotadd-guest: ready" in serial and "hotadd-probe: " in serial
    page = (art / "report.html").read_text()
    assert page.count("<svg") == 2 and "test_probe_fixture_then_a_failing_assertion" in page


def test_keep_on_failure_leaves_the_failing_guest_running(
        suite: Suite, conn: libvirt.virConnect) -> None:
    """--hotadd-keep-on-failure: the failing test's guest stays up, named in the summary."""
    from harness.host import storage

    suite.pytester.makepyfile("""
        def test_fails(hotadd_guest):
            assert hotadd_guest.processor_count() == 99
    """)
    art = suite.pytester.path / "art"
    result = suite.run("--hotadd-keep-on-failure", f"--hotadd-artifacts={art}")
    result.assert_outcomes(failed=1)
    kept = [line for line in result.outlines if line.startswith("hotadd: kept for inspection: ")]
    assert len(kept) == 1, result.outlines
    name = kept[0].split(": ")[2].split()[0]
    try:
        dom = conn.lookupByName(name)
        assert dom.isActive()
        [test_dir] = [p for p in art.iterdir() if p.name.endswith("test_fails")]
        assert str(test_dir / "serial.log") in kept[0]
        assert (test_dir / "screenshot.png").is_file()
    finally:
        with contextlib.suppress(Exception):
            conn.lookupByName(name).destroy()
        storage.remove_scratch(paths.scratch_dir() / name)


def test_a_guest_that_never_gets_ready_errors_each_test_once(suite: Suite) -> None:
    """The first test's error names the serial log; later tests fail at once with it instead
    of waiting for another boot."""
    suite.pytester.makepyfile("""
        def test_first(hotadd_guest): pass
        def test_second(hotadd_guest): pass
    """)
    art = suite.pytester.path / "art"
    result = suite.run("--hotadd-ready-timeout", "1", f"--hotadd-artifacts={art}")
    result.assert_outcomes(errors=2)
    out = result.stdout.str()
    assert "GuestNotReady" in out and "serial.log" in out
    assert "the session's guest failed to start earlier" in out
    boots = [p.name for p in art.iterdir() if p.name.startswith("_boot-")]
    assert len(boots) == 1, boots  # the second test did not boot (and wait for) another

"""The pytest plugin, tested the way users meet it: pytester runs small test suites through
it (options, markers and skips without a VM; fixtures, artifacts and JUnit properties against
the real reference guest under QEMU/libvirt)."""

from __future__ import annotations

import contextlib
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

import harness.guests.reference_kind
import harness.pytest_plugin
import harness.scenario
import harness.transport.ssh
from harness import paths
from harness.host import accel
from harness.host.domain import Accelerator

# pytester's in-process runs drop the modules a run imported when it ends, so the next run
# imports them again: paramiko key objects from two imports of its classes then compare
# unequal and the guest's (correct) host key is refused. Importing the stack here puts it in
# the baseline every run keeps.
_ = (harness.guests.reference_kind, harness.pytest_plugin, harness.scenario,
     harness.transport.ssh)

pytest_plugins = ["pytester"]

# pytester moves HOME; the guest build cache must stay where it is.
CACHE = paths.cache_dir()
PLUGIN: tuple[str, ...] = ()


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
          pytestconfig: pytest.Config) -> pytest.Pytester:
    """A pytester whose sessions load the plugin: through its pytest11 entry point when this
    venv has it (as this session shows), else with -p."""
    global PLUGIN
    names = {name for name, _ in pytestconfig.pluginmanager.list_name_plugin()}
    PLUGIN = () if "hotadd" in names else ("-p", "harness.pytest_plugin")
    monkeypatch.setenv("HOTADD_CACHE_DIR", str(CACHE))
    return pytester


def test_options_form_one_group(suite: pytest.Pytester) -> None:
    out = suite.runpytest(*PLUGIN, "--help").stdout.str()
    group = out[out.index("hotadd: vCPU hot-add scenarios on a real guest"):]
    for option in ("--hotadd-libvirt-uri", "--hotadd-guest", "--hotadd-image",
                   "--hotadd-driver", "--hotadd-accel", "--hotadd-keep-on-failure",
                   "--hotadd-artifacts", "--hotadd-boot-vcpus", "--hotadd-max-vcpus"):
        assert option in group, option
    assert "{reference,windows}" in group


def test_impossible_options_are_a_usage_error(suite: pytest.Pytester) -> None:
    suite.makepyfile("def test_nothing(): pass")
    result = suite.runpytest(*PLUGIN, "--hotadd-boot-vcpus", "5", "--hotadd-max-vcpus", "4")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*hotadd options: boot vCPUs 5 must be between 1 and max 4*"])


def test_markers_skip_saying_what_is_missing(suite: pytest.Pytester) -> None:
    suite.makepyfile("""
        import pytest

        @pytest.mark.hotadd_windows
        def test_windows(): pass

        @pytest.mark.hotadd_kvm
        def test_kvm(): pass

        @pytest.mark.hotadd_vcpus(8)
        def test_eight(): pass

        @pytest.mark.hotadd_vcpus(free=3)
        def test_three_free(): pass

        @pytest.mark.hotadd_vcpus(4, free=2)
        def test_fits(): pass
    """)
    reasons = _skip_reasons(suite, "--strict-markers", "--hotadd-accel", "tcg")
    assert reasons == {
        "test_windows": "needs the Windows guest; this session runs the reference guest: run "
                        "with --hotadd-guest windows --hotadd-image IMAGE (see 'hotadd image "
                        "build')",
        "test_kvm": "needs KVM; this session forces TCG (--hotadd-accel tcg)",
        "test_eight": "needs a guest with 8 vCPUs; this session's has 4 (run with "
                      "--hotadd-max-vcpus 8)",
        "test_three_free": "needs 3 vCPU slots free for hot-add; this session's guest boots 2 "
                           "of 4 (2 free): run with --hotadd-max-vcpus 5 or a lower "
                           "--hotadd-boot-vcpus",
        "test_fits": None,
    }


def _skip_reasons(suite: pytest.Pytester, *args: str) -> dict[str, str | None]:
    """test name -> its skip reason (None: it ran)."""
    reprec = suite.inline_run(*PLUGIN, *args)
    out: dict[str, str | None] = {}
    for report in reprec.getreports("pytest_runtest_logreport"):
        name = report.nodeid.split("::")[-1]
        if report.skipped:
            assert isinstance(report.longrepr, tuple)
            out[name] = report.longrepr[2].removeprefix("Skipped: ")
        elif report.when == "call":
            out[name] = None
    return out


def test_kvm_marker_names_the_hosts_reason(suite: pytest.Pytester) -> None:
    status = accel.kvm_status()
    suite.makepyfile("""
        import pytest

        @pytest.mark.hotadd_kvm
        def test_kvm(): pass
    """)
    reasons = _skip_reasons(suite)
    if status.accelerator is Accelerator.KVM:
        assert reasons == {"test_kvm": None}
    else:
        assert reasons == {"test_kvm": f"needs KVM, which this host cannot give: "
                                       f"{status.reason}"}


def test_unmarked_sessions_boot_nothing(suite: pytest.Pytester) -> None:
    """The plugin is loaded in every session of this venv: without its fixtures it must not
    touch libvirt or write artifacts."""
    suite.makepyfile("def test_plain(): pass")
    result = suite.runpytest(*PLUGIN, "--hotadd-artifacts", str(suite.path / "art"))
    result.assert_outcomes(passed=1)
    assert not (suite.path / "art").exists()
    assert "hotadd: report" not in result.stdout.str()


def test_guest_tests_are_marked_hotadd(suite: pytest.Pytester) -> None:
    suite.makepyfile("""
        def test_needs_a_guest(hotadd): pass
        def test_plain(): pass
    """)
    result = suite.runpytest(*PLUGIN, "--strict-markers", "-m", "not hotadd")
    result.assert_outcomes(passed=1, deselected=1)


def _properties(junit: Path) -> dict[str, dict[str, str]]:
    root = ET.parse(junit).getroot()
    return {case.get("name", ""): {p.get("name", ""): p.get("value", "")
                                   for p in case.iter("property")}
            for case in root.iter("testcase")}


@pytest.mark.vm
def test_fixtures_artifacts_and_junit_properties_on_the_reference_guest(
        suite: pytest.Pytester) -> None:
    """One booted guest serves every test, each restored to the saved state; results reach
    JUnit properties, per-test artifacts and the HTML report; a failing test leaves a
    screenshot."""
    suite.makepyfile("""
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
            assert False, "failing on purpose"
    """)
    art = suite.path / "art"
    junit = suite.path / "junit.xml"
    result = suite.runpytest(*PLUGIN, f"--junitxml={junit}", f"--hotadd-artifacts={art}")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([f"hotadd: report {art / 'report.html'}"])

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
    assert json.loads((failing / "test.json").read_text())["outcome"] == "failed"
    assert (failing / "screenshot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (dirs["test_adds_one"] / "screenshot.png").exists()
    # each test's console: the boot, then what happened after its restore
    serial = (dirs["test_adds_one"] / "serial.log").read_text(errors="replace")
    assert "hotadd-guest: ready" in serial and "hotadd-probe: " in serial
    page = (art / "report.html").read_text()
    assert page.count("<svg") == 2 and "test_probe_fixture_then_a_failing_assertion" in page


@pytest.mark.vm
def test_keep_on_failure_leaves_the_failing_guest_running(
        suite: pytest.Pytester, conn: libvirt.virConnect) -> None:
    """--hotadd-keep-on-failure: the failing test's guest stays up, named in the summary."""
    from harness.host import storage

    suite.makepyfile("""
        def test_fails(hotadd_guest):
            assert hotadd_guest.processor_count() == 99
    """)
    art = suite.path / "art"
    result = suite.runpytest(*PLUGIN, "--hotadd-keep-on-failure", f"--hotadd-artifacts={art}")
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


@pytest.mark.vm
def test_a_guest_that_never_gets_ready_errors_each_test_once(suite: pytest.Pytester) -> None:
    """The first test's error names the serial log; later tests fail at once with it instead
    of waiting for another boot."""
    suite.makepyfile("""
        def test_first(hotadd_guest): pass
        def test_second(hotadd_guest): pass
    """)
    result = suite.runpytest(*PLUGIN, "--hotadd-ready-timeout", "1",
                             f"--hotadd-artifacts={suite.path / 'art'}")
    result.assert_outcomes(errors=2)
    out = result.stdout.str()
    assert "GuestNotReady" in out and "serial.log" in out
    assert "the session's guest failed to start earlier" in out
    assert result.duration < 60

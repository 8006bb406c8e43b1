"""The pytest plugin, tested the way users meet it: pytester runs small test suites through
it (options, markers and skips, no VM). Fixtures, artifacts and JUnit properties against the
real reference guest are in tests/vm/test_plugin_vm.py."""

from __future__ import annotations

import pytest

from harness.host import accel
from harness.host.domain import Accelerator
from tests.support.plugin_suite import Suite, suite

pytest_plugins = ["pytester"]
_ = suite  # the fixture, used by name


def test_options_form_one_group(suite: Suite) -> None:
    out = suite.run("--help").stdout.str()
    group = out[out.index("hotadd: vCPU hot-add scenarios on a real guest"):]
    for option in ("--hotadd-libvirt-uri", "--hotadd-guest", "--hotadd-image",
                   "--hotadd-driver", "--hotadd-accel", "--hotadd-keep-on-failure",
                   "--hotadd-artifacts", "--hotadd-boot-vcpus", "--hotadd-max-vcpus"):
        assert option in group, option
    assert "{reference,windows}" in group


def test_impossible_options_are_a_usage_error(suite: Suite) -> None:
    suite.pytester.makepyfile("def test_nothing(): pass")
    result = suite.run("--hotadd-boot-vcpus", "5", "--hotadd-max-vcpus", "4")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*hotadd options: boot vCPUs 5 must be between 1 and max 4*"])


def test_a_remote_libvirt_is_refused_before_any_test(suite: Suite) -> None:
    suite.pytester.makepyfile("def test_nothing(): pass")
    result = suite.run("--hotadd-libvirt-uri", "qemu+ssh://root@kvm7/system")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*is a remote host: the session's guest is saved once*"])


def test_markers_skip_saying_what_is_missing(suite: Suite) -> None:
    suite.pytester.makepyfile("""
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


def _skip_reasons(suite: Suite, *args: str) -> dict[str, str | None]:
    """test name -> its skip reason (None: it ran)."""
    reprec = suite.inline_run(*args)
    out: dict[str, str | None] = {}
    for report in reprec.getreports("pytest_runtest_logreport"):
        name = report.nodeid.split("::")[-1]
        if report.skipped:
            assert isinstance(report.longrepr, tuple)
            out[name] = report.longrepr[2].removeprefix("Skipped: ")
        elif report.when == "call":
            out[name] = None
    return out


def test_kvm_marker_names_the_hosts_reason(suite: Suite) -> None:
    status = accel.kvm_status()
    suite.pytester.makepyfile("""
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


def test_unmarked_sessions_boot_nothing(suite: Suite) -> None:
    """The plugin is loaded in every session of this venv: without its fixtures it must not
    touch libvirt or write artifacts."""
    suite.pytester.makepyfile("def test_plain(): pass")
    result = suite.run("--hotadd-artifacts", str(suite.pytester.path / "art"))
    result.assert_outcomes(passed=1)
    assert not (suite.pytester.path / "art").exists()
    assert "hotadd: report" not in result.stdout.str()


def test_guest_tests_are_marked_hotadd(suite: Suite) -> None:
    suite.pytester.makepyfile("""
        def test_needs_a_guest(hotadd): pass
        def test_plain(): pass
    """)
    result = suite.run("--strict-markers", "-m", "not hotadd")
    result.assert_outcomes(passed=1, deselected=1)

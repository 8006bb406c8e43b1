"""A developer's driver beside the probe (issue 16): what is refused before anything boots,
and the parts of the flow that need no guest (record streams from the console, the module a
crash report blames). The flow on the real guest: tests/vm/test_own_module.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harness.commands.run import add_arguments, spec_from_args
from harness.developer import DriverCheck, DriverReport, StreamResult
from harness.errors import InputError
from harness.guests import reference
from harness.guests.base import DriverOrder, DriverPackage
from harness.guests.reference import ReferenceImage


def spec_of(*argv: str):  # type: ignore[no-untyped-def]
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return spec_from_args(parser.parse_args(list(argv)))


@pytest.fixture(scope="module")
def example_ko(reference_image: ReferenceImage) -> Path:
    return reference.example_module(reference_image)


def test_module_options_make_a_driver_package(example_ko: Path) -> None:
    spec = spec_of("--with-module", str(example_ko), "--with-module-param", "size_by=online",
                   "--with-module-order", "before")
    assert spec.own_driver == DriverPackage(example_ko, (("size_by", "online"),),
                                            DriverOrder.BEFORE)
    assert spec_of("--with-module", str(example_ko)).own_driver.order is DriverOrder.AFTER


@pytest.mark.parametrize(("argv", "match"), [
    (["--with-module", "/nonexistent/x.ko"], "no such file"),
    (["--with-module", "README.md"], "loads .ko files"),
    (["--with-module-param", "a=1"], "without --with-module"),
    (["--with-module-order", "before"], "without --with-module"),
    (["--guest", "windows", "--image", "w.qcow2", "--with-module", "x.ko"],
     "--with-module is for --guest reference"),
    (["--with-driver", "x.sys"], "--with-driver is for --guest windows"),
    (["--guest", "windows", "--image", "w.qcow2", "--with-driver-param", "a=1"],
     "without --with-driver"),
])
def test_misused_options_are_refused_with_the_fix(argv: list[str], match: str) -> None:
    with pytest.raises(InputError, match=match) as err:
        spec_of(*argv)
    assert err.value.fix


@pytest.mark.parametrize(("param", "match"), [
    ("size_by", "not NAME=VALUE"), ("=x", "not NAME=VALUE"), ("9x=1", "not NAME=VALUE"),
    ("size_by=a b", "cannot hold spaces or quotes"), ('size_by="x"', "spaces or quotes"),
])
def test_bad_parameters_are_refused(example_ko: Path, param: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        spec_of("--with-module", str(example_ko), "--with-module-param", param)


def test_a_parameter_given_twice_is_refused(example_ko: Path) -> None:
    with pytest.raises(InputError, match="more than once"):
        spec_of("--with-module", str(example_ko), "--with-module-param", "size_by=online",
                "--with-module-param", "size_by=possible")


def test_files_that_are_no_kernel_module_are_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.ko"
    text.write_text("hello")
    with pytest.raises(InputError, match="not an ELF file"):
        spec_of("--with-module", str(text))
    exe = tmp_path / "true.ko"
    shutil.copyfile(shutil.which("true") or "/bin/true", exe)
    with pytest.raises(InputError, match="not a relocatable object"):
        spec_of("--with-module", str(exe))
    obj = tmp_path / "plain.ko"
    src = tmp_path / "plain.c"
    src.write_text("int x;\n")
    subprocess.run(["gcc", "-c", str(src), "-o", str(obj)], check=True)
    with pytest.raises(InputError, match=r"no vermagic|modinfo cannot read"):
        spec_of("--with-module", str(obj))


def test_the_guest_side_check_refuses_another_kernel_and_unknown_parameters(
        example_ko: Path, reference_image: ReferenceImage) -> None:
    with pytest.raises(InputError, match=r"built for kernel .* runs 5\.10\.0-1-amd64") as err:
        reference.check_module(example_ko, "5.10.0-1-amd64", [])
    assert "linux-headers-5.10.0-1-amd64" in str(err.value.fix)
    with pytest.raises(InputError, match=r"declares no such parameter .*size_by"):
        reference.check_module(example_ko, reference_image.kernel_version, [("sise_by", "x")])
    probe = reference_image.build_dir / "hotadd_probe.ko"
    with pytest.raises(InputError, match="hotadd's own probe"):
        reference.check_module(probe, reference_image.kernel_version, [])


def test_each_writer_has_its_own_stream_on_the_console() -> None:
    log = "\n".join([
        "[ 1.0] hotadd-records[mine]: {\"v\":1,\"seq\":1,\"event\":\"load\"}",
        "[ 1.1] hotadd-probe: {\"v\":1,\"seq\":1,\"event\":\"load\"}",
        "[ 1.2] hotadd-records[mine]: {\"v\":1,\"seq\":2,\"x\":1}",
        "[ 1.3] hotadd-records[other]: {\"v\":1,\"seq\":1,\"event\":\"load\"}",
        "[ 2.0] hotadd-records[mine]: {\"v\":1,\"seq\":1,\"event\":\"load\"}",
        "[ 2.1] hotadd-records[mine]: {\"v\":1,\"seq\":2,\"y\":1}",
    ])
    assert reference.writer_records_from_console(log, "mine") == (
        '{"v":1,"seq":1,"event":"load"}\n{"v":1,"seq":2,"y":1}\n'), "its last load only"
    assert reference.writer_records_from_console(log, "other").count("\n") == 1
    assert reference.writer_records_from_console(log, "none") == ""
    assert reference.records_from_console(log) == '{"v":1,"seq":1,"event":"load"}\n'


def test_the_module_an_oops_blames_is_named() -> None:
    excerpt = ("BUG: unable to handle page fault for address: ffffb6e1c0a0e000\n"
               "#PF: supervisor write access in kernel mode\n"
               "CPU: 2 PID: 24 Comm: cpuhp/2 Tainted: G           OE      6.1.0-57-amd64\n"
               "RIP: 0010:example_online+0x3c/0x60 [hotadd_example]\n")
    assert reference.faulting_module(excerpt) == "hotadd_example (example_online)"
    assert reference.faulting_module("RIP: 0010:memset_orig+0x33/0xb0\n") is None
    in_kernel = ("RIP: 0010:memset_orig+0x33/0xb0\nCall Trace:\n <TASK>\n"
                 " ? page_fault_oops+0x1/0x2\n ? other+0x1/0x2 [notthis]\n"
                 " example_online+0x2b/0x40 [hotadd_example]\n cpuhp_invoke_callback+0x1/0x2\n")
    assert reference.faulting_module(in_kernel) == "hotadd_example (example_online)"


def test_a_vanished_driver_or_a_failed_stream_fails_the_report(example_ko: Path) -> None:
    pkg = DriverPackage(example_ko, name="hotadd_example")
    ok = DriverReport(pkg, (DriverCheck("load", True), DriverCheck("add 1", True)),
                      (StreamResult("hotadd_example", "", 0, None),))
    assert ok.passed and "after add 1: hotadd_example loaded" in ok.describe()
    gone = DriverReport(pkg, (DriverCheck("load", True), DriverCheck("add 1", False)), ())
    assert not gone.passed and "VANISHED" in gone.describe()
    assert gone.to_dict()["checks"][1] == {"after": "add 1", "running": False}


def test_windows_driver_options_make_a_package_and_refuse_a_non_driver(tmp_path: Path) -> None:
    from tests.unit.test_windows_own_driver import pe_image

    sys_file = pe_image(tmp_path / "MyDriver.sys")
    spec = spec_of("--guest", "windows", "--image", "w.qcow2", "--with-driver", str(sys_file),
                   "--with-driver-param", "Size=4", "--with-driver-order", "before")
    assert spec.own_driver == DriverPackage(sys_file, (("Size", "4"),), DriverOrder.BEFORE)
    (tmp_path / "text.sys").write_text("hello")
    with pytest.raises(InputError, match="not a Windows PE image"):
        spec_of("--guest", "windows", "--image", "w.qcow2", "--with-driver",
                str(tmp_path / "text.sys"))


def test_the_driver_report_reaches_junit_properties(example_ko: Path, tmp_path: Path) -> None:
    from harness.report.junit import junit_properties
    from harness.result import RunResult
    from harness.spec import ScenarioSpec

    pkg = DriverPackage(example_ko, name="hotadd_example")
    report = DriverReport(pkg, (DriverCheck("load", True), DriverCheck("add 1", False)),
                          (StreamResult("hotadd_example", "", 0, None),),
                          faulting_module="hotadd_example (example_online)")
    result = RunResult(ScenarioSpec(), tmp_path, "d", None, (), (), {}, {}, driver=report)
    props = dict(junit_properties(result))
    assert props["hotadd.driver"] == "hotadd_example: fail"
    assert props["hotadd.driver.after.add_1"] == "vanished"
    assert props["hotadd.driver.stream.hotadd_example"] == "no records"
    assert props["hotadd.driver.faulting_module"] == "hotadd_example (example_online)"
    assert not result.passed and result.to_dict()["driver"]["passed"] is False

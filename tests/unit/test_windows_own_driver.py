"""A developer's driver on the Windows guest (`--with-driver`), against the WinRM double only:
WindowsSession copies the .sys in with `put`, creates its kernel service and Parameters with
sc.exe/reg.exe argument vectors, starts, queries and stops it, and reads its recorder's own
records file. What Windows itself does with the driver (signature checks, the load, a
bugcheck and its faulting module) is not tested here: none of this has met Windows."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.errors import InputError, TransportError
from harness.guests import windows_control
from harness.guests.base import DriverOrder, DriverPackage
from harness.guests.windows_kind import WindowsSession, check_sys
from harness.transport.winrm import LINE_BUDGET, WinRMEndpoint, WinRMTransport
from tests.support.winrm_double import WinRMDouble, split_argv

PASSWORD = "Own-Driver-Pa55!"


def pe_image(path: Path, machine: int = 0x8664, subsystem: int = 1) -> Path:
    """The headers of a PE image (what check_sys reads), padded like a small driver."""
    pe = 0x80
    head = bytearray(0x200)
    head[:2] = b"MZ"
    head[0x3C:0x40] = struct.pack("<I", pe)
    head[pe:pe + 4] = b"PE\0\0"
    head[pe + 4:pe + 6] = struct.pack("<H", machine)
    head[pe + 24 + 68:pe + 24 + 70] = struct.pack("<H", subsystem)
    path.write_bytes(bytes(head) + bytes(range(256)) * 40)
    return path


@pytest.fixture
def double(tmp_path: Path) -> Iterator[WinRMDouble]:
    with WinRMDouble(tmp_path / "guest", password=PASSWORD) as d:
        yield d


@pytest.fixture
def session(double: WinRMDouble) -> Iterator[WindowsSession]:
    with WinRMTransport(WinRMEndpoint(port=double.port, username="Administrator",
                                      password=PASSWORD, operation_timeout=2,
                                      read_timeout=5)) as t:
        yield WindowsSession(t)


@pytest.fixture
def driver(tmp_path: Path) -> DriverPackage:
    sys_file = pe_image(tmp_path / "MyDriver.sys")
    params = (("Size", "4"), ("Mode", "per cpu & more"))
    return DriverPackage(sys_file, params, DriverOrder.AFTER,
                         name=check_sys(sys_file, params))


def test_install_start_query_stop_and_records(double: WinRMDouble, session: WindowsSession,
                                              driver: DriverPackage) -> None:
    session.install_driver(driver)
    installed = double.path(windows_control.own_driver_path("MyDriver"))
    assert installed.read_bytes() == driver.path.read_bytes()
    svc = double.services.services["mydriver"]
    assert (svc["type"], svc["start"], svc["binpath"]) == (
        "kernel", "demand", "C:\\hotadd\\drivers\\MyDriver.sys")
    key = "hklm\\system\\currentcontrolset\\services\\mydriver\\parameters"
    assert double.services.registry[key] == {"Size": ("REG_DWORD", "4"),
                                             "Mode": ("REG_SZ", "per cpu & more")}
    assert not session.driver_running(driver)
    session.start_driver(driver)
    assert session.driver_running(driver)
    assert session.driver_records(driver) == "", "a driver without a recorder writes none"
    stream = double.path(windows_control.writer_records_path("MyDriver"))
    stream.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"v": 1, "seq": 1, "t_ns": 0, "kind": "driver", "event": "load",
                       "active_count": 2, "flags": 1})
    stream.write_text(line + "\n")
    assert session.driver_records(driver) == line + "\n"
    session.stop_driver(driver)
    assert not session.driver_running(driver)
    session.stop_driver(driver)  # stopping a stopped driver is no error


def test_a_second_install_repoints_the_existing_service(
        double: WinRMDouble, session: WindowsSession, driver: DriverPackage) -> None:
    session.install_driver(driver)
    session.install_driver(driver)
    verbs = [argv[1] for argv in double.services.calls if argv[0] == "sc.exe"]
    assert verbs == ["create", "create", "config"]


def test_a_driver_whose_service_stopped_is_seen_gone(
        double: WinRMDouble, session: WindowsSession, driver: DriverPackage) -> None:
    session.install_driver(driver)
    session.start_driver(driver)
    double.services.stop_itself("MyDriver")
    assert not session.driver_running(driver)


def test_an_unsigned_driver_is_refused_with_the_fix(
        double: WinRMDouble, session: WindowsSession, driver: DriverPackage) -> None:
    session.install_driver(driver)
    double.services.start_code = windows_control.ERROR_INVALID_IMAGE_HASH
    with pytest.raises(TransportError, match=r"sc.exe start MyDriver failed \(577\)") as err:
        session.start_driver(driver)
    assert "sign-test.ps1" in str(err.value.fix)


def test_every_guest_command_is_an_argument_vector_within_cmd_limits(
        double: WinRMDouble, session: WindowsSession, driver: DriverPackage) -> None:
    session.install_driver(driver)
    session.start_driver(driver)
    quoted = [line for line in double.command_lines if line.startswith('"')]
    assert {split_argv(line)[0] for line in quoted} == {"sc.exe", "reg.exe"}
    assert all(len(line) <= LINE_BUDGET and "%" not in line for line in double.command_lines)


@pytest.mark.parametrize(("make", "match"), [
    (lambda p: p.write_bytes(b"not a PE file"), "not a Windows PE image"),
    (lambda p: pe_image(p, machine=0x14C), "not an x64 kernel driver"),
    (lambda p: pe_image(p, subsystem=2), "not an x64 kernel driver"),
])
def test_files_that_are_no_x64_kernel_driver_are_refused(tmp_path: Path, make: object,
                                                         match: str) -> None:
    path = tmp_path / "Bad.sys"
    assert callable(make)
    make(path)
    with pytest.raises(InputError, match=match):
        check_sys(path, ())


@pytest.mark.parametrize("name", ["HotAddProbe", "has space", "x" * 49])
def test_names_that_cannot_be_a_service_and_writer_are_refused(tmp_path: Path,
                                                               name: str) -> None:
    with pytest.raises(InputError, match="cannot be its service and records name"):
        check_sys(pe_image(tmp_path / f"{name}.sys"), ())


def test_parameter_values_cmd_would_alter_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"cmd\.exe would alter"):
        check_sys(pe_image(tmp_path / "Ok.sys"), (("Path", "%TEMP%"),))


def test_split_argv_undoes_the_quoting() -> None:
    assert split_argv('"sc.exe" "a b" "C:\\\\dir\\\\\\\\" "x\\\\y"') == [
        "sc.exe", "a b", "C:\\\\dir\\\\", "x\\\\y"]

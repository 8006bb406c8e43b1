"""The KMDF probe's kernel-facing code, checked with mingw-w64's DDK headers on Linux.

driver/probe_wdm.c (the probe's Parameters, callback, registration) and the recorder's
driver/recorder/recorder_wdm.c (the writer thread, the record folder's DACL and link refusal,
the capture of a notification, the register and deregister calls) include only ntifs.h, so
x86_64-w64-mingw32-gcc type-checks every kernel call it makes, warning-free, and links it
against mingw-w64's ntoskrnl/hal import libraries. What only Windows can show (that the DACL
takes, that a junction or a hard link is refused) is not run here: see driver/README.md. The
KMDF glue (driver.c) needs wdf.h, which only the WDK has: CI on a Windows runner builds it.
Also checked here, from the source text: which file includes what, and that the callback and
its helpers stay free of calls that are unsafe above PASSIVE_LEVEL.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.support.driver_toolchain import (
    DRIVER_DIR,
    MINGW_CC,
    MINGW_COMPAT,
    PORTABLE_SOURCES,
    RECORDER_DIR,
    require_tool,
)

WDM_SOURCE = DRIVER_DIR / "probe_wdm.c"
RECORDER_SOURCE = RECORDER_DIR / "recorder_wdm.c"
WDM_SOURCES = (WDM_SOURCE, RECORDER_SOURCE)
EXAMPLE_DRIVER = RECORDER_DIR / "example" / "example_driver.c"
LINK_STUB = DRIVER_DIR / "tests" / "mingw_link_stub.c"
POOL_ZERO = DRIVER_DIR / "tests" / "mingw_pool_zero.c"
WARNINGS = ["-Wall", "-Wextra", "-Werror", "-Wshadow", "-Wstrict-prototypes",
            "-Wmissing-prototypes", "-Wconversion", "-Wno-sign-conversion"]
DDK_CANDIDATES = (Path("/usr/x86_64-w64-mingw32/include/ddk"),
                  Path("/usr/share/mingw-w64/include/ddk"))

# Every kernel routine the WDM part imports (ExAllocatePoolWithTag comes from the link
# stub's stand-in for the WDK's inline ExAllocatePoolZero). A new one needs a look at its
# IRQL and at whether it exists on Server 2019 before it is added here.
EXPECTED_IMPORTS = {
    "DbgPrintEx", "ExAllocatePoolWithTag", "ExFreePoolWithTag",
    "KeDeregisterProcessorChangeCallback", "KeGetProcessorNumberFromIndex",
    "KeInitializeEvent", "KeQueryActiveProcessorCountEx", "KeQueryPerformanceCounter",
    "KeRegisterProcessorChangeCallback", "KeSetEvent", "KeWaitForSingleObject",
    "ObfDereferenceObject", "ObfReferenceObject", "PsCreateSystemThread",
    "PsTerminateSystemThread", "RtlInitUnicodeString", "ZwClose", "ZwCreateFile",
    "ZwOpenKey", "ZwQueryValueKey", "ZwWriteFile", "memset",
    # The record folder: SYSTEM + Administrators DACL, and the link checks (all in ntoskrnl
    # since Windows 2000; SeExports is data).
    "RtlAddAccessAllowedAceEx", "RtlCreateAcl", "RtlCreateSecurityDescriptor",
    "RtlSetDaclSecurityDescriptor", "RtlSetOwnerSecurityDescriptor", "SeExports",
    "ZwQueryInformationFile", "ZwSetInformationFile", "ZwSetSecurityObject",
}
KERNEL_MODULES = {"ntoskrnl.exe", "hal.dll"}


@pytest.fixture(scope="module")
def mingw() -> str:
    return require_tool(*MINGW_CC)


@pytest.fixture(scope="module")
def ddk_include(mingw: str) -> Path:
    for candidate in DDK_CANDIDATES:
        if (candidate / "ntddk.h").is_file():
            return candidate
    pytest.fail("mingw-w64's DDK headers (ddk/ntddk.h) are missing: install the Debian package "
                "mingw-w64 (apt-get install mingw-w64; ./setup.sh does this).", pytrace=False)


def _compile(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def _wdm_flags(ddk_include: Path) -> list[str]:
    return [*WARNINGS, f"-I{ddk_include}", f"-I{DRIVER_DIR}", f"-I{RECORDER_DIR}", "-include",
            str(MINGW_COMPAT)]


@pytest.mark.parametrize("source", WDM_SOURCES, ids=lambda p: p.name)
def test_wdm_part_compiles_warning_free_against_the_ddk_headers(
        mingw: str, ddk_include: Path, tmp_path: Path, source: Path) -> None:
    done = _compile([mingw, "-c", *_wdm_flags(ddk_include), "-o", str(tmp_path / "wdm.o"),
                     str(source)])
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_portable_part_compiles_warning_free_for_windows(mingw: str, tmp_path: Path) -> None:
    for source in PORTABLE_SOURCES:
        done = _compile([mingw, "-c", "-std=c99", "-pedantic", *WARNINGS, f"-I{RECORDER_DIR}",
                         "-o", str(tmp_path / (source.stem + ".o")), str(source)])
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""


def test_the_type_checking_is_real(mingw: str, ddk_include: Path, tmp_path: Path) -> None:
    """A callback of the wrong type must be refused, or the checks above prove nothing."""
    wrong = tmp_path / "wrong_callback.c"
    wrong.write_text(
        '#include "probe_wdm.h"\n'
        "static VOID WrongCallback(PVOID Context, ULONG NtNumber) {\n"
        "    UNREFERENCED_PARAMETER(Context); UNREFERENCED_PARAMETER(NtNumber); }\n"
        "PVOID Register(VOID);\n"
        "PVOID Register(VOID) {\n"
        "    return KeRegisterProcessorChangeCallback(WrongCallback, NULL,\n"
        "                                             KE_PROCESSOR_CHANGE_ADD_EXISTING); }\n")
    done = _compile([mingw, "-c", *_wdm_flags(ddk_include), "-o", str(tmp_path / "w.o"),
                     str(wrong)])
    assert done.returncode != 0
    assert "incompatible pointer type" in done.stderr


def _link(mingw: str, ddk_include: Path, image: Path, *sources: Path,
          defines: tuple[str, ...] = ()) -> None:
    done = _compile([mingw, *_wdm_flags(ddk_include), *defines, "-nostdlib", "-shared",
                     "-Wl,--subsystem,native", "-Wl,--entry,DriverEntry", "-o", str(image),
                     *map(str, sources), str(POOL_ZERO), str(RECORDER_SOURCE),
                     *map(str, PORTABLE_SOURCES), "-lntoskrnl", "-lhal", "-lgcc"])
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_every_kernel_import_resolves_and_is_known(mingw: str, ddk_include: Path,
                                                   tmp_path: Path) -> None:
    image = tmp_path / "probe.sys"
    _link(mingw, ddk_include, image, LINK_STUB, WDM_SOURCE)
    assert _imports(image) == EXPECTED_IMPORTS


@pytest.mark.parametrize("size_by_active", ["0", "1"])
def test_a_developer_driver_with_the_recorder_compiles_and_links(
        mingw: str, ddk_include: Path, tmp_path: Path, size_by_active: str) -> None:
    """The recorder's example driver: only hotadd_recorder.h's API, a WDM DriverEntry of its
    own; both its correct and its buggy build (per-processor state sized at load)."""
    image = tmp_path / "example.sys"
    _link(mingw, ddk_include, image, EXAMPLE_DRIVER,
          defines=(f"-DEXAMPLE_SIZE_BY_ACTIVE={size_by_active}",))
    assert _imports(image) <= EXPECTED_IMPORTS | {"KeQueryMaximumProcessorCountEx"}


def _imports(image: Path) -> set[str]:
    objdump = require_tool("x86_64-w64-mingw32-objdump", "binutils-mingw-w64-x86-64")
    dump = _compile([objdump, "-p", str(image)])
    assert dump.returncode == 0, dump.stderr
    imports: dict[str, set[str]] = {}
    current: set[str] | None = None
    for line in dump.stdout.splitlines():
        if m := re.match(r"\s*DLL Name: (\S+)", line):
            current = imports.setdefault(m.group(1), set())
        elif current is not None and (m := re.match(r"\s*[0-9a-f]+\s+\d+\s+(\w+)$", line)):
            current.add(m.group(1))
        elif line.startswith("There is an export table"):
            current = None
    assert {dll.lower() for dll in imports} <= KERNEL_MODULES
    found: set[str] = set().union(*imports.values())
    return found


def _includes(path: Path) -> list[str]:
    return re.findall(r'^\s*#\s*include\s+([<"][^>"]+[>"])', path.read_text(), re.MULTILINE)


def test_each_layer_includes_only_what_it_may() -> None:
    own = {'"probe_public.h"', '"probe_record.h"', '"probe_atomic.h"', '"probe_wdm.h"',
           '"hotadd_recorder.h"'}
    assert set(_includes(DRIVER_DIR / "probe_wdm.h")) == {"<ntifs.h>"}
    assert set(_includes(WDM_SOURCE)) <= own
    assert set(_includes(RECORDER_SOURCE)) <= own | {"<ntifs.h>"}
    # the public API needs only wdm.h's types: a KMDF driver includes it after ntddk.h
    assert set(_includes(RECORDER_DIR / "hotadd_recorder.h")) == {"<wdm.h>"}
    assert set(_includes(DRIVER_DIR / "driver.c")) == {'"probe_wdm.h"', "<wdf.h>"}
    # The portable part: its own headers, and for MSVC the compiler's SAL and intrinsics
    # headers; nothing from the kernel, nothing from the C library.
    compiler = {"<sal.h>", "<intrin.h>"}
    portable = [RECORDER_DIR / name for name in ("probe_public.h", "probe_record.h",
                                                 "probe_atomic.h")] + list(PORTABLE_SOURCES)
    kernel_facing = {'"probe_wdm.h"', '"hotadd_recorder.h"'}
    for path in portable:
        assert set(_includes(path)) <= (own - kernel_facing) | compiler, path.name
    assert [p.name for p in DRIVER_DIR.rglob("*.[ch]") if "<wdf.h>" in _includes(p)] == [
        "driver.c"]


def _function_body(source: str, name: str) -> str:
    """The text of a function's body: from its definition's '{' to the matching '}'."""
    match = re.search(rf"^{name}\s*\(", source, re.MULTILINE)
    assert match, f"{name} is not defined at the start of a line"
    start = source.index("{", match.end())
    depth = 0
    for index in range(start, len(source)):
        depth += {"{": 1, "}": -1}.get(source[index], 0)
        if depth == 0:
            return source[start:index + 1]
    raise AssertionError(f"{name}: unbalanced braces")


# What the callback path may not do: wait, allocate, touch files or the registry, page.
UNSAFE_ABOVE_PASSIVE = re.compile(
    r"\b(Zw\w+|Nt\w+|Ex(Allocate|Free)\w*|KeWaitFor\w+|KeDelayExecutionThread|"
    r"PAGED_CODE|DbgPrint\w*|Rtl\w*Registry\w*|Io\w+|ObReference\w*|Ps\w+)\s*\(")
CALLBACK_PATH = {WDM_SOURCE: ("HapProcessorChangeCallback",),
                 RECORDER_SOURCE: ("HotAddRecorderNotifyEx", "HotAddRecorderNotify",
                                   "HapClockRead", "HapThreadId", "HapWake")}


def test_callback_path_is_nonpaged_and_safe_at_dispatch_level() -> None:
    for path, names in CALLBACK_PATH.items():
        source = path.read_text()
        paged = set(re.findall(r"#pragma alloc_text\(PAGE, (\w+)\)", source))
        for name in names:
            body = _function_body(source, name)
            assert not UNSAFE_ABOVE_PASSIVE.search(body), \
                f"{name}: {UNSAFE_ABOVE_PASSIVE.search(body)}"
            assert name not in paged, f"{name} must stay in nonpaged code"
    callback = _function_body(WDM_SOURCE.read_text(), "HapProcessorChangeCallback")
    # *OperationStatus is written once, when the core's veto decision (probe_core.c /
    # probe_veto.c, tested on the host: only a Start, only the named one) says so, after the
    # recorder read it on entry (op_status_in).
    writes = re.findall(r"\*OperationStatus\s*=[^=]", callback)
    assert len(writes) == 1
    guard = callback[:callback.index("*OperationStatus =")]
    assert "veto = HotAddRecorderNotifyEx(" in guard and "if (veto != 0u)" in guard
    recorder = RECORDER_SOURCE.read_text()
    notify = _function_body(recorder, "HotAddRecorderNotifyEx")
    assert "OpStatusIn = (unsigned int)*OperationStatus;" in notify
    assert not re.search(r"\*OperationStatus\s*=[^=]", notify), "the recorder never writes it"
    # The phase comes from the thread, not from a flag set around the register call.
    assert "HapCoreNotify(&Recorder->Core, &record, HapThreadId())" in notify
    assert "Registering" not in recorder
    # A developer's recorder has no veto policy, so HotAddRecorderNotify's decision is 0.
    start = _function_body(recorder, "HotAddRecorderStart")
    assert "options.VetoIndex = HAP_NO_VETO;" in start


def test_every_pageable_routine_asserts_it() -> None:
    for path in (*WDM_SOURCES, DRIVER_DIR / "driver.c"):
        source = path.read_text()
        for name in re.findall(r"#pragma alloc_text\(PAGE, (\w+)\)", source):
            assert "PAGED_CODE();" in _function_body(source, name), f"{path.name}: {name}"

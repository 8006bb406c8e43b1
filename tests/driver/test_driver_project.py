"""The KMDF probe's build files and README agree with its sources.

The Windows build (HotAddProbe.vcxproj, build.cmd, the CI workflow) cannot run on Linux, so
what can drift silently is checked here: every driver source is in the project, the project
targets what the README promises (KMDF 1.27, Windows 10 1809 NTDDI), and the parameter names,
defaults and record path the Windows-guest PowerShell relies on are the ones the code uses.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from tests.support.driver_toolchain import DRIVER_DIR

REPO = DRIVER_DIR.parent
MSBUILD = "{http://schemas.microsoft.com/developer/msbuild/2003}"
PUBLIC_H = (DRIVER_DIR / "probe_public.h").read_text()
README = (DRIVER_DIR / "README.md").read_text()


def _define(name: str) -> str:
    match = re.search(rf"#define\s+{name}\s+(.+?)\s*(/\*.*)?$", PUBLIC_H, re.MULTILINE)
    assert match, f"{name} is not defined in probe_public.h"
    return match.group(1)


def _wide(name: str) -> str:
    """The text of an L"..." define, C escapes undone."""
    literal = _define(name)
    assert literal.startswith('L"') and literal.endswith('"'), literal
    return literal[2:-1].replace("\\\\", "\\")


def test_project_compiles_every_driver_source_and_lists_every_header() -> None:
    project = ET.parse(DRIVER_DIR / "HotAddProbe.vcxproj").getroot()
    compiled = {e.get("Include") for e in project.iter(f"{MSBUILD}ClCompile") if e.get("Include")}
    headers = {e.get("Include") for e in project.iter(f"{MSBUILD}ClInclude")}
    assert compiled == {p.name for p in DRIVER_DIR.glob("*.c")}
    assert headers == {p.name for p in DRIVER_DIR.glob("*.h")}


def test_project_targets_kmdf_1_27_and_server_2019() -> None:
    project = ET.parse(DRIVER_DIR / "HotAddProbe.vcxproj").getroot()

    def values(tag: str) -> set[str | None]:
        return {e.text for e in project.iter(f"{MSBUILD}{tag}")}

    assert values("KMDF_VERSION_MAJOR") == {"1"}
    assert values("KMDF_VERSION_MINOR") == {"27"}
    assert values("DriverType") == {"KMDF"}
    assert values("ConfigurationType") == {"Driver"}
    assert values("_NT_TARGET_VERSION") == {"0xA000006"}  # NTDDI_WIN10_RS5: Server 2019
    assert values("TargetName") == {"HotAddProbe"}
    assert values("TreatWarningAsError") == {"true"}


def test_readme_documents_every_parameter_with_its_type_and_default() -> None:
    names = {_wide(m) for m in re.findall(r"#define\s+(HAP_PARAM_\w+_W)\b", PUBLIC_H)}
    assert names == {"Flags", "VetoIndex", "VetoStatus", "VetoDuringReplay"}
    for name in names:
        assert re.search(rf"^\| `{name}` \| REG_DWORD \|", README, re.MULTILINE), name
    assert _define("HAP_DEFAULT_FLAGS") == "1u"
    assert re.search(r"^\| `Flags` \| REG_DWORD \| `1` \|", README, re.MULTILINE)
    assert _define("HAP_DEFAULT_VETO_STATUS") == "0xC000009Au"
    assert re.search(r"^\| `VetoStatus` \| REG_DWORD \| `0xC000009A`", README, re.MULTILINE)
    assert _wide("HAP_SERVICE_NAME_W") == "HotAddProbe"
    assert r"HKLM\SYSTEM\CurrentControlSet\Services\HotAddProbe\Parameters" in README


def test_readme_names_the_record_file_the_driver_writes() -> None:
    nt_path = _wide("HAP_RECORD_FILE_W")
    assert nt_path.startswith("\\??\\")
    assert f"`{nt_path[4:]}`" in README
    assert _wide("HAP_RECORD_DIR_W") == nt_path.rsplit("\\", 1)[0]


def test_ci_workflow_builds_with_the_script_and_publishes_the_sys() -> None:
    workflow = (REPO / ".github" / "workflows" / "driver.yml").read_text()
    assert "runs-on: windows-2022" in workflow
    assert r"driver\build.cmd" in workflow
    assert "driver/build/${{ matrix.configuration }}/HotAddProbe.sys" in workflow
    build_cmd = (DRIVER_DIR / "build.cmd").read_bytes()
    assert b"HotAddProbe.vcxproj" in build_cmd and b"\r\n" in build_cmd


def test_every_source_file_opens_with_a_block_saying_what_and_where() -> None:
    for path in sorted([*DRIVER_DIR.glob("*.[ch]"), *(DRIVER_DIR / "tests").glob("*.[ch]")]):
        head = path.read_text()[:1500]
        assert head.startswith(f"/*\n * {path.name} - "), path.name
        assert "Environment:" in head, f"{path.name}: say where it runs"


def test_sources_stay_in_plain_ascii() -> None:
    for path in [*DRIVER_DIR.glob("*.[ch]"), DRIVER_DIR / "build.cmd"]:
        assert path.read_bytes().isascii(), path.name

"""The KMDF probe's build files and README agree with its sources.

The Windows build (HotAddProbe.vcxproj, build.cmd, the CI workflow) cannot run on Linux, so
what can drift silently is checked here: every driver source is in the project, the project
targets what the README promises (KMDF 1.27, Windows 10 1809 NTDDI), and the parameter names,
defaults and record path the Windows-guest PowerShell relies on are the ones the code uses.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.support.driver_toolchain import DRIVER_DIR

REPO = DRIVER_DIR.parent
MSBUILD = "{http://schemas.microsoft.com/developer/msbuild/2003}"
PUBLIC_H = (DRIVER_DIR / "recorder" / "probe_public.h").read_text()
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
    def listed(pattern: str) -> set[str | None]:
        # the driver's own files and the recorder's (its example driver is a separate build)
        return {str(p.relative_to(DRIVER_DIR)).replace("/", "\\")
                for d in (DRIVER_DIR, DRIVER_DIR / "recorder") for p in d.glob(pattern)}

    assert compiled == listed("*.c")
    assert headers == listed("*.h")
    assert "recorder;" in project_text("AdditionalIncludeDirectories")


def project_text(tag: str) -> str:
    project = ET.parse(DRIVER_DIR / "HotAddProbe.vcxproj").getroot()
    return " ".join(e.text or "" for e in project.iter(f"{MSBUILD}{tag}"))


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


WORKFLOW = (REPO / ".github" / "workflows" / "driver.yml").read_text()


def test_ci_workflow_builds_with_the_script_and_publishes_the_sys() -> None:
    assert "runs-on: windows-2022" in WORKFLOW
    assert r"driver\build.cmd" in WORKFLOW
    assert "driver/build/${{ matrix.configuration }}/HotAddProbe.sys" in WORKFLOW
    build_cmd = (DRIVER_DIR / "build.cmd").read_bytes()
    assert b"HotAddProbe.vcxproj" in build_cmd and b"\r\n" in build_cmd


def _values(tag: str) -> set[str | None]:
    project = ET.parse(DRIVER_DIR / "HotAddProbe.vcxproj").getroot()
    return {e.text for e in project.iter(f"{MSBUILD}{tag}")}


def _kit_versions() -> set[str | None]:
    packages = ET.parse(DRIVER_DIR / "packages.config").getroot()
    return {p.get("version") for p in packages.iter("package")}


def test_the_kit_is_pinned_in_one_version_everywhere() -> None:
    """The NuGet WDK/SDK, the props that import them and the project's platform version."""
    packages = ET.parse(DRIVER_DIR / "packages.config").getroot()
    assert {p.get("id") for p in packages.iter("package")} == {
        "Microsoft.Windows.WDK.x64", "Microsoft.Windows.SDK.CPP", "Microsoft.Windows.SDK.CPP.x64"}
    (version,) = _kit_versions()
    assert version is not None and re.fullmatch(r"10\.0\.\d+\.\d+", version)
    props = ET.parse(DRIVER_DIR / "Directory.Build.props").getroot()
    assert {e.text for e in props.iter("HapKitVersion")} == {version}
    build = version.split(".")[2]
    assert _values("WindowsTargetPlatformVersion") == {f"10.0.{build}.0"}


def test_pool_nx_opt_in_and_spectre_mitigation_are_what_the_comments_say() -> None:
    definitions = _values("PreprocessorDefinitions")
    assert any(d and "POOL_NX_OPTIN=1" in d.split(";") for d in definitions)
    assert "ExInitializeDriverRuntime(DrvRtPoolNxOptIn);" in (DRIVER_DIR / "driver.c").read_text()
    assert _values("SpectreMitigation") == {"Spectre"}
    assert "MSB8040" in README and "Spectre" in README


def test_code_analysis_has_a_rule_set_and_refuses_to_run_without_it() -> None:
    assert _values("CodeAnalysisRuleSet") == {
        "$(WDKContentRoot)CodeAnalysis\\DriverRecommendedRules.ruleset"}
    project = (DRIVER_DIR / "HotAddProbe.vcxproj").read_text()
    assert "!Exists('$(CodeAnalysisRuleSet)')" in project
    assert "Code-analysis policy" in WORKFLOW and "build.cmd Release analyze" in WORKFLOW


def test_ci_gets_the_wdk_from_nuget_not_from_the_runner_image() -> None:
    assert r"nuget restore driver\packages.config -PackagesDirectory driver\packages" in WORKFLOW
    assert "Component.Microsoft.Windows.DriverKit" in WORKFLOW
    assert "Microsoft.VisualStudio.Component.VC.Runtimes.x86.x64.Spectre" in WORKFLOW
    assert "/driver/packages/" in (REPO / ".gitignore").read_text().splitlines()


def test_ci_runs_every_host_test_of_the_driver() -> None:
    run = re.search(r"run: python -m pytest -p no:hotadd (.+)$", WORKFLOW, re.MULTILINE)
    assert run, "the host-checks job must run pytest"
    selected = run.group(1).split()
    assert selected == ["tests/driver"]
    driver_tests = {p.name for p in (REPO / "tests" / "driver").glob("test_*.py")}
    assert {"test_driver_project.py", "test_driver_ring.py"} <= driver_tests
    assert not list((REPO / "tests").glob("test_driver_*.py")), "driver tests live in tests/driver"
    for trigger in ("tests/driver/**", "tests/support/driver_toolchain.py", "driver/**"):
        assert WORKFLOW.count(f'"{trigger}"') == 2, trigger


def test_readme_says_which_windows_builds_load_the_driver_and_why() -> None:
    section = README[README.index("## Where it loads"):]
    section = section[:section.index("\n## ", 4)]
    for build in ("17763", "20348", "26100"):
        assert build in section
    for reason in ("KMDF 1.27", "0xA000006", "14393"):
        assert reason in section


def own_sources() -> list[Path]:
    """The driver's, the recorder's (with its example) and the host tests' C files (not the
    restored kit under driver/packages)."""
    dirs = (DRIVER_DIR, DRIVER_DIR / "recorder", DRIVER_DIR / "recorder" / "example",
            DRIVER_DIR / "tests")
    return [p for d in dirs for p in d.glob("*.[ch]")]


def test_every_source_file_opens_with_a_block_saying_what_and_where() -> None:
    for path in sorted(own_sources()):
        head = path.read_text()[:1500]
        assert head.startswith(f"/*\n * {path.name} - "), path.name
        assert "Environment:" in head, f"{path.name}: say where it runs"


def test_sources_stay_in_plain_ascii() -> None:
    for path in [*own_sources(), DRIVER_DIR / "build.cmd"]:
        assert path.read_bytes().isascii(), path.name

"""Every PowerShell script in the repo, and the snippets the harness generates, parse cleanly
with the tree-sitter PowerShell grammar (no ERROR or MISSING nodes). A syntax error in a
provisioning script would otherwise only show up hours into a lab image build."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import tree_sitter_powershell
from tree_sitter import Language, Node, Parser

from harness.guests import windows_control, windows_image, windows_setup
from harness.paths import REPO_ROOT
from harness.transport import winrm

PARSER = Parser(Language(tree_sitter_powershell.language()))


def syntax_errors(source: str) -> list[str]:
    """Where the grammar found an error or had to invent a missing token."""
    found: list[str] = []

    def walk(node: Node) -> None:
        if node.type == "ERROR" or node.is_missing:
            row, col = node.start_point
            text = (node.text or b"").decode("utf-8", "replace")[:60]
            found.append(f"line {row + 1} col {col + 1}: {node.type} {text!r}")
        for child in node.children:
            walk(child)

    walk(PARSER.parse(source.encode("utf-8")).root_node)
    return found


def repo_scripts() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                          "*.ps1", "*.psm1"], cwd=REPO_ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    return sorted(REPO_ROOT / p for p in out)


def test_the_repo_has_the_windows_scripts() -> None:
    names = {p.name for p in repo_scripts()}
    assert {"hotadd-provision.ps1", "hotadd-probe.ps1"} <= names


@pytest.mark.parametrize("script", repo_scripts(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_script_parses_without_errors(script: Path) -> None:
    assert syntax_errors(script.read_text(encoding="utf-8-sig")) == []


@pytest.mark.parametrize("source", [
    "if ($x { 1 }",
    "function f { param([string]$a) ",
    "$h = @{ a = 1; b = ",
    "Write-Output 'unterminated",
])
def test_the_check_catches_broken_powershell(source: str) -> None:
    assert syntax_errors(source) != []


def test_generated_snippets_parse() -> None:
    plan = winrm.powershell_plan("Write-Output 'x'\n" * 2000)
    decoder = plan.steps[-1].rsplit(" ", 1)[1]
    import base64

    snippets = [
        base64.b64decode(decoder).decode("utf-16-le"),
        winrm.fetch_chunk_script(r"C:\Program Data\it's\records.jsonl", 1024, 4096),
        windows_control.ProbeParameters(flags=1, veto_index=3, veto_status=0xC000009A,
                                veto_during_replay=False).call(),
        f"Install-HotAddProbe -Source {windows_control.ps_literal('hotaddprobe.sys')}",
        windows_control.clock_script(),
    ]
    for snippet in snippets:
        assert syntax_errors(snippet) == [], snippet


def test_probe_control_calls_name_functions_that_exist() -> None:
    text = windows_control.PROBE_SCRIPT.read_text(encoding="utf-8")
    defined = {n for n in _function_names(text)}
    for call in ("Install-HotAddProbe", "Set-HotAddProbeParameters", "Start-HotAddProbe",
                 "Stop-HotAddProbe", "Get-HotAddProcessorCount",
                 "Get-HotAddPreflight", "Get-HotAddProvisioning"):
        assert call in defined
        assert call in Path(windows_control.__file__).read_text(encoding="utf-8")


def _function_names(source: str) -> list[str]:
    names: list[str] = []

    def walk(node: Node) -> None:
        if node.type == "function_statement":
            for child in node.children:
                if child.type == "function_name":
                    names.append((child.text or b"").decode())
        for child in node.children:
            walk(child)

    walk(PARSER.parse(source.encode()).root_node)
    return names


def test_critical_provisioning_steps_exist() -> None:
    """The image build fails on these steps by name: a renamed step must not slip through."""
    import re

    steps = set(re.findall(r"Invoke-Step '([^']+)'", windows_setup.PROVISION_SCRIPT.read_text()))
    assert steps >= windows_image.CRITICAL_STEPS

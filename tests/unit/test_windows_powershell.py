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


# ---- provisioning order (parsed, not grepped) ----------------------------------------------

def _commands(node: Node) -> list[Node]:
    """Every `command` node under `node`, in source order."""
    return [n for n in _walk(node) if n.type == "command"]


def _name(command: Node) -> str:
    names = [c for c in command.children if c.type in ("command_name", "command_name_expr")]
    return (names[0].text or b"").decode() if names else ""


def _literals(node: Node) -> list[str]:
    """The string literals and bare words under `node`, unquoted, in order."""
    out: list[str] = []

    def walk(n: Node) -> None:
        if n.type in ("string_literal", "generic_token"):
            out.append((n.text or b"").decode().strip("'\""))
            return
        for child in n.children:
            walk(child)

    walk(node)
    return out


def provision_steps() -> list[tuple[str, Node]]:
    """hotadd-provision.ps1's `Invoke-Step 'name' { body }` calls in execution order."""
    root = PARSER.parse(windows_setup.PROVISION_SCRIPT.read_bytes()).root_node
    steps = []
    for cmd in _commands(root):
        if _name(cmd) == "Invoke-Step":
            elements = next(c for c in cmd.children if c.type == "command_elements")
            body = _first(elements, "script_block_expression")
            steps.append((_literals(elements)[0], body))
    return steps


def _first(node: Node, type_: str) -> Node:
    """The first node of `type_` under `node` (depth first)."""
    found = [n for n in _walk(node) if n.type == type_]
    if not found:
        raise LookupError(type_)
    return found[0]


def _walk(node: Node) -> list[Node]:
    return [node, *(n for child in node.children for n in _walk(child))]


def test_provisioning_turns_winrm_on_first() -> None:
    """A later step that hangs (network profile, drivers, bcdedit) can then be examined over
    WinRM instead of only on a screen nobody sees."""
    names = [name for name, _ in provision_steps()]
    assert names[0] == "winrm"
    for later in ("virtio drivers", "network profile private", "test signing"):
        assert names.index(later) > names.index("winrm")


def test_autologon_secret_is_removed_in_its_own_last_step() -> None:
    steps = provision_steps()
    name, body = steps[-1]
    assert name == "forget the autologon password"
    calls = {_name(c) for c in _commands(body)}
    assert "Remove-ItemProperty" in calls  # DefaultPassword
    assert "DefaultPassword" in _literals(body)
    assert "LsaStorePrivateData" in (body.text or b"").decode()
    for other_name, other in steps[:-1]:
        text = (other.text or b"").decode()
        assert "LsaStorePrivateData" not in text and "DefaultPassword" not in text, other_name


def test_winrm_starts_plain_automatic_not_delayed() -> None:
    """`sc.exe config WinRM start= auto` clears DelayedAutoStart; PowerShell 5.1's Set-Service
    cannot (and Enable-PSRemoting may leave WinRM delayed)."""
    _, body = next(s for s in provision_steps() if s[0] == "winrm")
    sc = [c for c in _commands(body)
          if _name(c) == "Invoke-Native" and _literals(c)[:1] == ["sc.exe"]]
    assert [_literals(c)[1:] for c in sc] == [["config", "WinRM", "start=", "auto"]]
    assert "Set-Service" not in {_name(c) for c in _commands(body)}

"""One source for the Windows probe's replies: the keys each hotadd-probe.ps1 function prints
(its hashtable literal feeding Write-HotAddResult, read with the tree-sitter PowerShell grammar)
are exactly the field names of the harness's reply type for that function, in order, and the
WinRM double's replies carry the same keys."""

from __future__ import annotations

from dataclasses import fields

import pytest
import tree_sitter_powershell
from tree_sitter import Language, Node, Parser

from harness.errors import TransportError
from harness.guests import windows_control as windows

PARSER = Parser(Language(tree_sitter_powershell.language()))
RESULT_WRITER = "Write-HotAddResult"


def _text(node: Node) -> str:
    return (node.text or b"").decode("utf-8")


def _descendants(node: Node, kind: str, *, into_same: bool = True) -> list[Node]:
    """Nodes of type `kind` under `node` in source order (not below a match if not into_same)."""
    found: list[Node] = []

    def walk(n: Node) -> None:
        for child in n.children:
            if child.type == kind:
                found.append(child)
                if not into_same:
                    continue
            walk(child)

    walk(node)
    return found


def hash_keys(literal: Node) -> tuple[str, ...]:
    """The keys of one hashtable literal (not of hashtables nested in its values)."""
    body = next((c for c in literal.children if c.type == "hash_literal_body"), None)
    if body is None:
        return ()
    return tuple(_text(next(c for c in entry.children if c.type == "key_expression"))
                 for entry in body.children if entry.type == "hash_entry")


def _function_name(function: Node) -> str:
    return _text(next(c for c in function.children if c.type == "function_name"))


def script_replies(source: str) -> dict[str, tuple[tuple[str, ...], ...]]:
    """Per function, the key tuples of every reply it writes. A reply written from a variable
    (Set-HotAddProbeParameters echoes the values it set) counts as the keys of the function's
    non-empty hashtable literals: the names the variable can be filled from."""
    tree = PARSER.parse(source.encode("utf-8"))
    replies: dict[str, tuple[tuple[str, ...], ...]] = {}
    for function in _descendants(tree.root_node, "function_statement"):
        written: list[tuple[str, ...]] = []
        for command in _descendants(function, "command"):
            name = next((c for c in command.children if c.type == "command_name"), None)
            if name is None or _text(name) != RESULT_WRITER:
                continue
            elements = next(c for c in command.children if c.type == "command_elements")
            literals = _descendants(elements, "hash_literal_expression", into_same=False)
            if literals:
                written.append(hash_keys(literals[0]))
            else:  # a variable: the keys it can hold
                keys = [hash_keys(h) for h in _descendants(function, "hash_literal_expression",
                                                           into_same=False)]
                written.append(tuple(k for group in keys for k in group))
        if written:
            replies[_function_name(function)] = tuple(written)
    return replies


SCRIPT = script_replies(windows.PROBE_SCRIPT.read_text(encoding="utf-8"))


def test_every_function_that_replies_has_a_declared_reply_type() -> None:
    declared = {reply.FUNCTION for reply in windows.PROBE_REPLIES}  # type: ignore[attr-defined]
    assert set(SCRIPT) == declared | {windows.ProbeParameters.FUNCTION}


@pytest.mark.parametrize("reply", windows.PROBE_REPLIES, ids=lambda r: r.__name__)
def test_script_keys_equal_the_reply_type(reply: type) -> None:
    keys = tuple(f.name for f in fields(reply))
    assert SCRIPT[reply.FUNCTION] == (keys,), (
        f"{reply.FUNCTION} in hotadd-probe.ps1 writes {SCRIPT[reply.FUNCTION]}, "
        f"windows.{reply.__name__} declares {keys}")


def test_parameter_names_equal_the_script() -> None:
    """Set-HotAddProbeParameters echoes the subset of its Parameters values that is set."""
    assert SCRIPT[windows.ProbeParameters.FUNCTION] == (windows.ProbeParameters.NAMES,)
    tree = PARSER.parse(windows.PROBE_SCRIPT.read_bytes())
    function = next(f for f in _descendants(tree.root_node, "function_statement")
                    if _function_name(f) == windows.ProbeParameters.FUNCTION)
    params = [_text(v).lstrip("$") for p in _descendants(function, "script_parameter")
              for v in p.children if v.type == "variable"]
    assert tuple(params) == windows.ProbeParameters.NAMES


def test_the_extraction_reads_nested_and_conditional_values() -> None:
    source = """function Get-X {
        Write-HotAddResult ([ordered]@{
            a = $(if ($y) { @{ inner = 1 } } else { '' }); b = 2
            c = Get-Thing
        })
    }
    function Set-Y { $v = [ordered]@{ P = 1; Q = 2 }; $s = [ordered]@{}; Write-HotAddResult $s }
    function Quiet { @{ z = 1 } }"""
    assert script_replies(source) == {"Get-X": (("a", "b", "c"),), "Set-Y": (("P", "Q"),)}


def test_a_renamed_key_is_caught() -> None:
    """Rename one key in a copy of the real script: the check sees it."""
    source = windows.PROBE_SCRIPT.read_text(encoding="utf-8")
    broken = script_replies(source.replace("active_all_groups =", "active_groups =", 1))
    keys = tuple(f.name for f in fields(windows.ProcessorCount))
    assert broken[windows.ProcessorCount.FUNCTION] != (keys,)


def test_a_reply_missing_a_key_is_a_transport_error() -> None:
    with pytest.raises(TransportError, match="lacks 'environment'"):
        windows.parse_reply(windows.ProcessorCount, {"logical": 2, "active_all_groups": 2})


def test_reply_values_follow_the_declared_types() -> None:
    pre = windows.parse_reply(windows.Provisioning, {"marker": None, "last_boot_utc": "x"})
    assert pre == windows.Provisioning(marker=None, last_boot_utc="x")
    with pytest.raises(TransportError, match=r"Start-HotAddProbe\.code: unexpected value None"):
        windows.parse_reply(windows.ServiceStart,
                            {"started": True, "code": None, "state": "Running", "message": ""})

"""The repository stands alone: a clone has every file its docs and code point to.

Checks every tracked text file for pointers outside the repository, every Markdown link and
every backquoted repository path in `harness/` and `docs/` for a file that exists, and the
facts page (docs/processor-change-semantics.md) for a tagged entry per oracle rule.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from harness.oracle.rules import RULES, Source

REPO = Path(__file__).resolve().parents[2]
FACTS = REPO / "docs" / "processor-change-semantics.md"

# Spelled in pieces so this file does not match itself.
_OUTSIDE = re.compile("|".join([r"\.\./" + "shared", r"(?<![\w.])/" + r"work/", r"~/" + "shared"]))
_MD_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# A backquoted relative path with a directory and a file extension: `docs/x.md`, `harness/a/b.py`.
_CODE_PATH = re.compile(r"`((?:\.\./)?[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)+\.(?:md|py|c|h|ps1|json|"
                        r"jsonl|xml|in|toml|yml|sh|j2))`")


def _tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True)
    return [REPO / name for name in out.stdout.decode().split("\0") if name]


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
        return None


def _inside(path: Path) -> bool:
    return path.resolve().is_relative_to(REPO)


def test_no_tracked_file_points_outside_the_repository() -> None:
    hits = []
    for path in _tracked():
        text = _text(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if _OUTSIDE.search(line):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:100]}")
    assert not hits, "pointers to files outside the repository:\n" + "\n".join(hits)


def _markdown_link_problems(path: Path, text: str) -> list[str]:
    problems = []
    for target in _MD_LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # an address (https:, mailto:) or an anchor in the same page
        resolved = (path.parent / target.split("#", 1)[0]).resolve()
        if not _inside(resolved) or not resolved.exists():
            problems.append(f"{path.relative_to(REPO)}: link ({target}) has no file in the repo")
    return problems


def _code_path_problems(path: Path, text: str) -> list[str]:
    problems = []
    for target in _CODE_PATH.findall(text):
        candidates = [(REPO / target).resolve(), (path.parent / target).resolve()]
        if not any(_inside(c) and c.exists() for c in candidates):
            problems.append(f"{path.relative_to(REPO)}: `{target}` is not a file in the repo")
    return problems


def test_markdown_links_resolve_to_files_in_the_repository() -> None:
    problems = []
    for path in _tracked():
        if path.suffix == ".md" and (text := _text(path)) is not None:
            problems += _markdown_link_problems(path, text)
    assert not problems, "\n".join(problems)


def test_doc_pointers_in_harness_and_docs_resolve() -> None:
    problems = []
    for path in _tracked():
        top = path.relative_to(REPO).parts[0]
        if top in ("harness", "docs") and (text := _text(path)) is not None:
            problems += _code_path_problems(path, text)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("text", "bad"), [
    ("see [facts](../../" + "sh" + "ared/reference/x.md)", True),
    ("see [facts](processor-change-semantics.md)", False),
    ("see [missing](nowhere.md)", True),
    ("[Learn](https://learn.microsoft.com/en-us/x)", False),
])
def test_the_link_check_catches_a_link_outside(text: str, bad: bool) -> None:
    """The checker itself: a link leaving the repo or naming a missing file is reported."""
    assert bool(_markdown_link_problems(FACTS, text)) is bad


@pytest.mark.parametrize(("line", "bad"), [
    ("facts: `/wo" + "rk/shared/reference/x.md`", True),
    ("(see `../sh" + "ared/reference/x.md`)", True),
    (".github/workflows/driver.yml", False),
])
def test_the_outside_pattern(line: str, bad: bool) -> None:
    assert bool(_OUTSIDE.search(line)) is bad


def _rule_index() -> dict[str, tuple[str, list[str]]]:
    """The facts page's rule index: rule id -> (tag, fact references)."""
    text = FACTS.read_text(encoding="utf-8")
    section = text.split("## Rule index", 1)[1]
    index = {}
    for row in re.findall(r"^\| `([a-z_.]+)` \| (\w+) \| (.+?) \|$", section, re.MULTILINE):
        rule_id, tag, facts = row
        index[rule_id] = (tag, [f.strip() for f in facts.split(",")])
    return index


def test_every_rule_has_a_tagged_entry_in_the_facts_page() -> None:
    index = _rule_index()
    assert set(index) == {rule.id for rule in RULES}
    for rule in RULES:
        tag, _ = index[rule.id]
        assert tag == rule.source.value, f"{rule.id}: tagged {tag}, rules.py says {rule.source}"


def test_every_fact_a_rule_cites_is_on_the_page() -> None:
    text = FACTS.read_text(encoding="utf-8")
    defined = set(re.findall(r"^- \*\*([WL]\d+)\*\* \(", text, re.MULTILINE))
    index = _rule_index()
    for rule in RULES:
        facts = index[rule.id][1]
        if rule.source is Source.FORMAT:
            assert "record-format.md" in facts or "L9" in facts, rule.id
        for fact in facts:
            if fact != "record-format.md":
                assert fact in defined, f"{rule.id} cites {fact}, which the page does not define"


def test_every_fact_names_a_tag_and_a_listed_source() -> None:
    text = FACTS.read_text(encoding="utf-8")
    sources = set(re.findall(r"^\| (S\d+) \|", text, re.MULTILINE))
    facts = re.findall(r"^- \*\*([WL]\d+)\*\* \((\w+)(?:; ([^)]*))?\)", text, re.MULTILINE)
    assert facts
    for fact, tag, cited in facts:
        assert tag in {"doc", "re", "open", "code", "format"}, fact
        for source in re.findall(r"S\d+", cited or ""):
            assert source in sources, f"{fact} cites {source}, not in the source table"
        if tag in {"doc", "code"}:
            assert cited, f"{fact} is tagged {tag} but names no source"

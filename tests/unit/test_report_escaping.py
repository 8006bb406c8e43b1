"""Text from a run directory reaches the HTML report and its timeline SVG as text: markup,
quotes and ampersands in result.json, records and test names are escaped, in element content
and in attribute values, in the page and in the SVG the page embeds as Markup."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from harness.oracle import check
from harness.oracle.model import HotAdd, ProtocolModel
from harness.records import dump_records, read_records
from harness.report.html import write_report
from harness.report.timeline import build_timeline, render_svg
from harness.result_file import parse_result

HOSTILE = """<script>alert("x")</script> & 'q' "dq" <b onmouseover="alert(1)">"""
SVG_NS = "{http://www.w3.org/2000/svg}"


class _Page(HTMLParser):
    """The elements, attributes and text a browser's parser would see."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _hostile_run(run: Path) -> dict[str, object]:
    model = ProtocolModel(existing=2, hotadds=(HotAdd(), HotAdd(veto=0xC000009A)))
    records = model.records()
    verdict = check(records, model.profile).to_dict()
    verdict["findings"] = [{"rule_id": HOSTILE, "severity": "fail", "source": HOSTILE,
                            "statement": HOSTILE, "message": HOSTILE, "seqs": [3]}]
    adds = [{"index": n, "libvirt_vcpu": 1 + n, "method": HOSTILE,
             "qemu": {"socket": 0, "core": n, "thread": 0},
             "host_t_wall": 1000.0 + n, "call_ms": 1.0, "ost_status": 0, "ost_ms": 2.0,
             "guest_index": 1 + n, "end_state": HOSTILE, "start_ms_approx": 3.0,
             "end_ms_approx": 8.0, "start_to_end_ms": 5.0} for n in (1, 2)]
    result = {
        "schema": "hotadd.result/1", "outcome": "fail", "exit_code": 1, "domain": HOSTILE,
        "error": HOSTILE, "scenario": {"guest": HOSTILE, "boot_vcpus": 2, "adds": 2},
        "verdict": verdict, "adds": adds,
        "host_checks": [{"check_id": HOSTILE, "passed": False, "severity": "fail",
                         "message": HOSTILE}],
        "timings_s": {"total": 1.0}, "versions": {HOSTILE: HOSTILE},
        "guest_clock": {"t0_host_wall": 1000.0},
    }
    run.mkdir()
    (run / "records.jsonl").write_text(dump_records(records))
    (run / "result.json").write_text(json.dumps(result))
    (run / "test.json").write_text(json.dumps({"nodeid": f"tests/x.py::t[{HOSTILE}]",
                                               "outcome": "failed"}))
    return result


@pytest.fixture
def page(tmp_path: Path) -> tuple[str, _Page]:
    _hostile_run(tmp_path / "run")
    text = write_report(tmp_path).read_text()
    parsed = _Page()
    parsed.feed(text)
    return text, parsed


def test_hostile_text_is_escaped_in_the_page(page: tuple[str, _Page]) -> None:
    text, parsed = page
    assert "<script" not in text and "<b " not in text
    assert "script" not in parsed.tags and "b" not in parsed.tags
    assert "onmouseover" not in {name for name, _ in parsed.attrs}
    # the text survives as text: a browser shows exactly what the run wrote
    shown = "".join(parsed.text)
    assert shown.count(HOSTILE) >= 8  # findings, host check, error, domain, versions, ...
    assert "&amp;" in text and "&lt;script&gt;" in text


def test_hostile_text_is_escaped_in_attribute_values(page: tuple[str, _Page]) -> None:
    """A test name with quotes stays inside its attribute (the SVG's aria-label)."""
    _, parsed = page
    labels = [value for name, value in parsed.attrs if name == "aria-label"]
    assert labels == [f"tests/x.py::t[{HOSTILE}]"]
    classes = [value for name, value in parsed.attrs if name == "class"]
    assert all('"' not in (v or "") for v in classes)


def test_the_svg_escapes_its_own_text(tmp_path: Path) -> None:
    """render_svg's output (embedded as Markup) is well-formed XML whose text and attributes
    carry the hostile strings literally: nothing was interpreted as markup."""
    result = _hostile_run(tmp_path / "run")
    records = read_records(tmp_path / "run" / "records.jsonl")
    svg = render_svg(build_timeline(parse_result(result), records), HOSTILE)
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG_NS}svg" and root.get("aria-label") == HOSTILE
    assert not [e for e in root.iter() if e.tag in (f"{SVG_NS}script", "script")]
    titles = [e.text or "" for e in root.iter(f"{SVG_NS}title")]
    assert any(HOSTILE in t for t in titles)  # the host add's tooltip names the method


def test_the_page_embeds_the_svg_once_as_markup(page: tuple[str, _Page]) -> None:
    text, parsed = page
    assert parsed.tags.count("svg") == 1
    assert "&lt;svg" not in text  # not escaped twice

"""The static HTML report of a run directory, or of a pytest session's artifacts directory.

One page, no scripts, no external files: a summary table, then per scenario its findings (the
oracle's and the host's), the timeline picture and the per-add latencies, with links to the
artifacts beside it. Built only from the files a run leaves (result.json, records.jsonl and,
for pytest, test.json), so `hotadd report DIR` rebuilds exactly the same page. result.json and
test.json are read through `harness.result_file` (typed, checked), never as raw dicts.

This module turns those files into typed rows; the page's markup is the Jinja2 template
`templates/report.html.j2`, rendered with autoescaping on, so every value from a run directory
(a finding's message, a test's name) reaches the page as text. The one exception is the
timeline SVG, which `render_svg` builds and escapes itself and which enters as Markup.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import jinja2
from markupsafe import Markup

from harness.errors import InputError
from harness.records import Record, read_records
from harness.report.timeline import build_timeline, clock_note, render_svg
from harness.result_file import (
    NO_RUN,
    RESULT_FILE,
    TEST_FILE,
    PytestOutcome,
    ResultAdd,
    ResultFile,
    parse_result,
    read_result,
    read_test_file,
)

REPORT_FILE = "report.html"
ARTIFACTS = ("result.json", "records.jsonl", "serial.log", "domain.xml", "screenshot.png")


@dataclass(frozen=True)
class ScenarioView:
    """What the page shows of one run directory."""

    name: str
    run_dir: Path
    result: ResultFile
    records: tuple[Record, ...]
    records_error: str | None  # why records.jsonl could not be read, if it could not
    test_outcome: str | None  # pytest's outcome, when the run was a pytest test

    @property
    def outcome(self) -> str:
        return self.result.outcome


def scenario_dirs(directory: Path) -> list[Path]:
    """The run directories under `directory`: itself, or its subdirectories holding a result
    or a pytest test's record (a test may have failed before any run)."""
    if (directory / RESULT_FILE).is_file():
        return [directory]
    return sorted({p.parent for name in (RESULT_FILE, TEST_FILE)
                   for p in directory.glob(f"*/{name}")})


def load_scenario(run_dir: Path, relative_to: Path) -> ScenarioView:
    result = (read_result(run_dir / RESULT_FILE)
              if (run_dir / RESULT_FILE).is_file() or not (run_dir / TEST_FILE).is_file()
              else parse_result(NO_RUN))
    records: list[Record] = []
    records_error = None
    if (run_dir / "records.jsonl").is_file():
        try:
            records = read_records(run_dir / "records.jsonl")
        except InputError as exc:
            records_error = str(exc)
    test = (read_test_file(run_dir / TEST_FILE) if (run_dir / TEST_FILE).is_file()
            else PytestOutcome(None, None))
    name = test.nodeid or (run_dir.name if run_dir != relative_to else
                           f"hotadd run {run_dir.name}")
    return ScenarioView(name, run_dir, result, tuple(records), records_error, test.outcome)


def write_report(directory: Path, run_dirs: list[Path] | None = None) -> Path:
    """Write `directory`/report.html for `run_dirs` (default: every run directory found
    there); return its path."""
    dirs = scenario_dirs(directory) if run_dirs is None else [
        d for d in run_dirs if (d / RESULT_FILE).is_file() or (d / TEST_FILE).is_file()]
    if not dirs:
        raise InputError(f"{directory} holds no {RESULT_FILE}",
                         "give a run directory ('hotadd run --run-dir') or a pytest "
                         "--hotadd-artifacts directory")
    views = [load_scenario(d, directory) for d in dirs]
    target = directory / REPORT_FILE
    target.write_text(render_report(views, directory))
    return target


# --- rendering ---------------------------------------------------------------------------------

TEMPLATE = "report.html.j2"
_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("harness.report", "templates"),
    autoescape=True,  # every value is text unless it is Markup
    undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    keep_trailing_newline=True)


def template(name: str) -> jinja2.Template:
    """A page template of `templates/` (this page's, or another report's that shares its CSS)."""
    return _ENV.get_template(name)


@dataclass(frozen=True)
class SummaryRow:
    """One scenario's line in the summary table."""

    anchor: str
    name: str
    test_outcome: str | None
    outcome: str
    verdict: str | None
    fails: int
    warns: int
    failed_checks: str
    adds: str
    max_ost_ms: str
    max_took_ms: str
    total_s: str


@dataclass(frozen=True)
class FindingRow:
    """An oracle finding (label F1, F2, ...) or a failed host check (label "host")."""

    label: str
    severity: str
    rule: str
    source: str | None
    message: str
    statement: str
    seqs: str


@dataclass(frozen=True)
class AddRow:
    index: str
    vcpu: str
    topology: str
    guest_index: str
    call_ms: str
    ost: str
    start_ms: str
    end_state: str
    end_ms: str
    took_ms: str


@dataclass(frozen=True)
class Link:
    href: str
    name: str


@dataclass(frozen=True)
class Section:
    """One scenario's part of the page."""

    anchor: str
    name: str
    test_outcome: str | None
    outcome: str
    what: str
    domain: str
    error: str | None
    findings: tuple[FindingRow, ...]
    verdict_records: int | None  # records judged, when there is a verdict
    records_error: str | None
    timeline_svg: Markup | None
    timeline_note: str
    adds: tuple[AddRow, ...]
    links: tuple[Link, ...]
    screenshot: str | None
    versions: str
    timings: str
    clock: str  # how guest times were mapped to host time, with the uncertainty
    start: str  # booted (cold) or restored from a saved guest (warm)


@dataclass(frozen=True)
class Page:
    title: str
    directory: str
    generated: str
    counts: str
    rows: tuple[SummaryRow, ...]
    sections: tuple[Section, ...]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _anchor(i: int) -> str:
    return f"s{i}"


def render_report(views: list[ScenarioView], directory: Path) -> str:
    counts: dict[str, int] = {}
    for v in views:
        counts[v.outcome] = counts.get(v.outcome, 0) + 1
    page = Page(
        title=directory.name, directory=str(directory),
        generated=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        counts=", ".join(f"{n} {k}" for k, n in sorted(counts.items())),
        rows=tuple(_summary_row(i, v) for i, v in enumerate(views)),
        sections=tuple(_section(i, v, directory) for i, v in enumerate(views)))
    return _ENV.get_template(TEMPLATE).render(page=page)


def _summary_row(i: int, v: ScenarioView) -> SummaryRow:
    r = v.result
    verdict = r.verdict
    osts = [a.ost_ms for a in r.adds if a.ost_ms is not None]
    took = [a.start_to_end_ms for a in r.adds if a.start_to_end_ms is not None]
    ends = ", ".join(a.end_state for a in r.adds) or "none"
    return SummaryRow(
        anchor=_anchor(i), name=v.name, test_outcome=v.test_outcome, outcome=v.outcome,
        verdict=verdict.verdict if verdict else None,
        fails=verdict.fails if verdict else 0, warns=verdict.warns if verdict else 0,
        failed_checks=", ".join(c.check_id for c in r.host_checks if not c.passed),
        adds=f"{len(r.adds)}: {ends}", max_ost_ms=_ms(max(osts) if osts else None),
        max_took_ms=_ms(max(took) if took else None),
        total_s=f"{r.timings_s.get('total', 0):.1f}")


def _section(i: int, v: ScenarioView, directory: Path) -> Section:
    r = v.result
    scenario = r.scenario
    veto = scenario.veto_index
    what = (f"{_or_unknown(scenario.guest)} guest, {_or_unknown(scenario.boot_vcpus)} boot "
            f"vCPUs, {_or_unknown(scenario.adds)} adds"
            + (f", veto of processor {veto}" if veto is not None else "")
            + (", add after unload" if scenario.add_after_unload else ""))
    svg, note = None, ""
    if v.records or r.adds:
        tl = build_timeline(r, v.records)
        # render_svg escapes every text and attribute value it writes (html.escape, quotes
        # included); tests/unit/test_report_escaping.py holds it to that.
        svg, note = Markup(render_svg(tl, v.name)), tl.note
    links, screenshot = _links(v, directory)
    return Section(
        anchor=_anchor(i), name=v.name, test_outcome=v.test_outcome, outcome=v.outcome,
        what=what, domain=str(r.domain),
        error=r.error or None, findings=_findings(r),
        verdict_records=r.verdict.records if r.verdict else None,
        records_error=v.records_error, timeline_svg=svg, timeline_note=note, adds=_adds(r),
        links=links, screenshot=screenshot,
        versions=", ".join(f"{k} {val}" for k, val in sorted(r.versions.items())),
        timings=", ".join(f"{k} {val:.2f}s" for k, val in r.timings_s.items()),
        clock=f"guest clock mapped to host time {clock_note(r.clock)}", start=_start(r))


def _or_unknown(value: object) -> str:
    return "?" if value is None else str(value)


def _start(r: ResultFile) -> str:
    start = r.start
    if start is None:
        return "start: unknown"
    how = "warm: restored saved guest" if start.warm else "cold: booted"
    key = f" {start.key}" if start.key else ""
    saved = ", saved for later runs" if start.saved else ""
    note = f" ({start.note})" if start.note else ""
    return f"start: {how}{key}{saved}{note}"


def _findings(r: ResultFile) -> tuple[FindingRow, ...]:
    findings = r.verdict.findings if r.verdict else ()
    rows = [FindingRow(
        label=f"F{n}", severity=f.severity, rule=f.rule_id, source=f.source,
        message=f.message, statement=f.statement,
        seqs=", ".join(str(s) for s in f.seqs)) for n, f in enumerate(findings, 1)]
    rows += [FindingRow(
        label="host", severity=c.severity, rule=c.check_id, source=None, message=c.message,
        statement="the host's own observation (QEMU, ACPI _OST, the guest's online count)",
        seqs="-") for c in r.host_checks if not c.passed]
    return tuple(rows)


def _adds(r: ResultFile) -> tuple[AddRow, ...]:
    late = r.add_after_unload
    rows = []
    adds: list[ResultAdd] = list(r.adds) + ([late] if late else [])
    for a in adds:
        rows.append(AddRow(
            index=f"{a.index}" + (" (after unload)" if a is late else ""),
            vcpu=str(a.libvirt_vcpu), topology=f"{a.socket}/{a.core}/{a.thread}",
            guest_index="-" if a.guest_index is None else str(a.guest_index),
            call_ms=_ms(a.call_ms),
            ost="none" if a.ost_ms is None else f"{a.ost_ms:.1f} ({a.ost_status})",
            start_ms=_ms(a.start_ms_approx), end_state=a.end_state,
            end_ms=_ms(a.end_ms_approx), took_ms=_ms(a.start_to_end_ms)))
    return tuple(rows)


def _links(v: ScenarioView, directory: Path) -> tuple[tuple[Link, ...], str | None]:
    """The artifacts beside the run's result, and the screenshot's address if there is one."""
    present = [name for name in ARTIFACTS if (v.run_dir / name).is_file()]
    rel = v.run_dir.relative_to(directory) if v.run_dir != directory else Path(".")
    links = tuple(Link(str(rel / name), name) for name in present)
    shot = str(rel / "screenshot.png") if "screenshot.png" in present else None
    return links, shot

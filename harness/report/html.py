"""The static HTML report of a run directory, or of a pytest session's artifacts directory.

One page, no scripts, no external files: a summary table, then per scenario its findings (the
oracle's and the host's), the timeline picture and the per-add latencies, with links to the
artifacts beside it. Built only from the files a run leaves (result.json, records.jsonl and,
for pytest, test.json), so `hotadd report DIR` rebuilds exactly the same page.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from harness.errors import InputError
from harness.records import Record, parse_records
from harness.report.timeline import build_timeline, render_svg

REPORT_FILE = "report.html"
RESULT_FILE = "result.json"
TEST_FILE = "test.json"  # written by the pytest plugin: node id and pytest's outcome
ARTIFACTS = ("result.json", "records.jsonl", "serial.log", "domain.xml", "screenshot.png")


@dataclass(frozen=True)
class ScenarioView:
    """What the page shows of one run directory."""

    name: str
    run_dir: Path
    result: dict[str, Any]
    records: tuple[Record, ...]
    records_error: str | None  # why records.jsonl could not be read, if it could not
    test_outcome: str | None  # pytest's outcome, when the run was a pytest test

    @property
    def outcome(self) -> str:
        return str(self.result.get("outcome", "error"))


def scenario_dirs(directory: Path) -> list[Path]:
    """The run directories under `directory`: itself, or its subdirectories holding a result
    or a pytest test's record (a test may have failed before any run)."""
    if (directory / RESULT_FILE).is_file():
        return [directory]
    return sorted({p.parent for name in (RESULT_FILE, TEST_FILE)
                   for p in directory.glob(f"*/{name}")})


def load_scenario(run_dir: Path, relative_to: Path) -> ScenarioView:
    try:
        result = (json.loads((run_dir / RESULT_FILE).read_text())
                  if (run_dir / RESULT_FILE).is_file() or not (run_dir / TEST_FILE).is_file()
                  else {"outcome": "none"})
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {run_dir / RESULT_FILE}: {exc}",
                         "give a run directory written by 'hotadd run' or the pytest plugin"
                         ) from exc
    records: list[Record] = []
    records_error = None
    if (run_dir / "records.jsonl").is_file():
        try:
            records = parse_records(run_dir / "records.jsonl")
        except InputError as exc:
            records_error = str(exc)
    test = {}
    if (run_dir / TEST_FILE).is_file():
        test = json.loads((run_dir / TEST_FILE).read_text())
    name = test.get("nodeid") or (run_dir.name if run_dir != relative_to else
                                   f"hotadd run {run_dir.name}")
    return ScenarioView(name, run_dir, result, tuple(records), records_error,
                        test.get("outcome"))


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

CSS = """
body { font-family: sans-serif; margin: 24px; color: #222; max-width: 1160px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 36px; border-top: 1px solid #ccc;
padding-top: 16px; } h3 { font-size: 14px; margin-bottom: 6px; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 12px; }
th, td { border: 1px solid #d0d0d0; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f0f3f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-weight: bold;
font-size: 12px; color: white; } .pass, .passed { background: #2e7d32; }
.fail, .failed { background: #c62828; } .error { background: #6d4c41; }
.skipped { background: #757575; } .warn { background: #ef6c00; }
.sev-fail { color: #c62828; font-weight: bold; } .sev-warn { color: #ef6c00; font-weight: bold; }
pre { background: #fbf3f2; border: 1px solid #e0b4b0; padding: 8px; white-space: pre-wrap; }
.note { color: #555; font-size: 12px; } svg.timeline { border: 1px solid #ddd; }
.links a { margin-right: 12px; } img.shot { max-width: 480px; border: 1px solid #ccc; }
"""


def _badge(text: str) -> str:
    return f'<span class="badge {escape(text)}">{escape(text)}</span>'


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f}"


def _anchor(i: int) -> str:
    return f"s{i}"


def render_report(views: list[ScenarioView], directory: Path) -> str:
    counts: dict[str, int] = {}
    for v in views:
        counts[v.outcome] = counts.get(v.outcome, 0) + 1
    head = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>hotadd report: {escape(directory.name)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>hotadd report: {len(views)} scenario{'s' if len(views) != 1 else ''} ({head})"
        "</h1>",
        f'<p class="note">{escape(str(directory))} &middot; generated '
        f'{time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}</p>',
        _summary(views),
    ]
    parts += [_section(i, v, directory) for i, v in enumerate(views)]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _summary(views: list[ScenarioView]) -> str:
    rows = ['<table class="summary"><tr><th>scenario</th><th>test</th><th>run</th>'
            "<th>verdict</th><th>findings (fail / warn)</th><th>host checks failed</th>"
            "<th>adds</th><th>max _OST ms</th><th>max start&rarr;end ms</th><th>time s</th>"
            "</tr>"]
    for i, v in enumerate(views):
        r = v.result
        verdict = r.get("verdict") or {}
        counts = verdict.get("counts") or {}
        adds = r.get("adds") or []
        failed_checks = [c["check_id"] for c in r.get("host_checks") or [] if not c["passed"]]
        osts = [a["ost_ms"] for a in adds if a.get("ost_ms") is not None]
        took = [a["start_to_end_ms"] for a in adds if a.get("start_to_end_ms") is not None]
        ends = ", ".join(a.get("end_state", "?") for a in adds) or "none"
        rows.append(
            f'<tr><td><a href="#{_anchor(i)}">{escape(v.name)}</a></td>'
            f"<td>{_badge(v.test_outcome) if v.test_outcome else '-'}</td>"
            f"<td>{_badge(v.outcome)}</td>"
            f"<td>{_badge(verdict['verdict']) if verdict else '-'}</td>"
            f'<td class="num">{counts.get("fail", 0)} / {counts.get("warn", 0)}</td>'
            f"<td>{escape(', '.join(failed_checks)) or '-'}</td>"
            f"<td>{len(adds)}: {escape(ends)}</td>"
            f'<td class="num">{_ms(max(osts) if osts else None)}</td>'
            f'<td class="num">{_ms(max(took) if took else None)}</td>'
            f'<td class="num">{(r.get("timings_s") or {}).get("total", 0):.1f}</td></tr>')
    rows.append("</table>")
    return "\n".join(rows)


def _section(i: int, v: ScenarioView, directory: Path) -> str:
    r = v.result
    scenario = r.get("scenario") or {}
    probe = scenario.get("probe") or {}
    veto = probe.get("veto_index")
    what = (f"{scenario.get('guest', '?')} guest, {scenario.get('boot_vcpus', '?')} boot "
            f"vCPUs, {scenario.get('adds', '?')} adds"
            + (f", veto of processor {veto}" if veto is not None else "")
            + (", add after unload" if scenario.get("add_after_unload") else ""))
    parts = [f'<h2 id="{_anchor(i)}">{escape(v.name)} '
             f"{_badge(v.test_outcome) if v.test_outcome else ''} {_badge(v.outcome)}</h2>",
             f'<p class="note">{escape(what)} &middot; domain {escape(str(r.get("domain")))}</p>']
    if r.get("error"):
        parts.append(f"<pre>{escape(str(r['error']))}</pre>")
    parts.append(_findings(r))
    if v.records_error:
        parts.append(f"<pre>records.jsonl: {escape(v.records_error)}</pre>")
    if v.records or r.get("adds"):
        tl = build_timeline(r, v.records)
        parts.append("<h3>timeline</h3>")
        parts.append(render_svg(tl, v.name))
        parts.append(f'<p class="note">{escape(tl.note)}. Hover a mark for its record.</p>')
    parts.append(_adds(r))
    parts.append(_links(v, directory))
    versions = r.get("versions") or {}
    timings = r.get("timings_s") or {}
    parts.append('<p class="note">versions: ' + escape(", ".join(
        f"{k} {val}" for k, val in sorted(versions.items()))) + "<br>timings: " + escape(
        ", ".join(f"{k} {val:.2f}s" for k, val in timings.items())) + "</p>")
    return "\n".join(parts)


def _findings(r: dict[str, Any]) -> str:
    verdict = r.get("verdict") or {}
    findings = verdict.get("findings") or []
    checks = [c for c in r.get("host_checks") or [] if not c["passed"]]
    if not findings and not checks:
        if verdict:
            return (f'<p>{_badge("pass")} the oracle found nothing wrong in '
                    f"{verdict.get('records', 0)} records; every host check passed.</p>")
        return "<p>No verdict: the run stopped before the probe's records existed.</p>"
    rows = ["<h3>findings</h3><table><tr><th>#</th><th>severity</th><th>rule</th>"
            "<th>what went wrong</th><th>the rule</th><th>records (seq)</th></tr>"]
    for n, f in enumerate(findings, start=1):
        sev = f.get("severity", "")
        rows.append(f"<tr><td>F{n}</td><td class=\"sev-{escape(sev)}\">{escape(sev)}</td>"
                    f"<td>{escape(f['rule_id'])} <span class=\"note\">"
                    f"[{escape(f.get('source', ''))}]</span></td>"
                    f"<td>{escape(f['message'])}</td><td class=\"note\">"
                    f"{escape(f.get('statement', ''))}</td>"
                    f"<td>{escape(', '.join(str(s) for s in f.get('seqs', [])))}</td></tr>")
    for c in checks:
        sev = c.get("severity", "")
        rows.append(f"<tr><td>host</td><td class=\"sev-{escape(sev)}\">{escape(sev)}</td>"
                    f"<td>{escape(c['check_id'])}</td><td>{escape(c['message'])}</td>"
                    "<td class=\"note\">the host's own observation (QEMU, ACPI _OST, the "
                    "guest's online count)</td><td>-</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _adds(r: dict[str, Any]) -> str:
    adds = list(r.get("adds") or [])
    late = r.get("add_after_unload")
    if not adds and not late:
        return ""
    rows = ["<h3>hot-adds</h3><table><tr><th>#</th><th>libvirt vCPU</th><th>socket/core/"
            "thread</th><th>guest processor</th><th>call ms</th><th>_OST ms (status)</th>"
            "<th>start ms ~</th><th>end</th><th>end ms ~</th><th>start&rarr;end ms</th></tr>"]
    for a in adds + ([late] if late else []):
        q = a.get("qemu") or {}
        index = f"{a['index']}" + (" (after unload)" if a is late else "")
        ost = "none" if a.get("ost_ms") is None else f"{a['ost_ms']:.1f} ({a['ost_status']})"
        rows.append(
            f"<tr><td>{escape(index)}</td><td class=\"num\">{a['libvirt_vcpu']}</td>"
            f"<td>{q.get('socket')}/{q.get('core')}/{q.get('thread')}</td>"
            f"<td class=\"num\">{'-' if a.get('guest_index') is None else a['guest_index']}"
            f"</td><td class=\"num\">{_ms(a.get('call_ms'))}</td>"
            f"<td class=\"num\">{escape(ost)}</td>"
            f"<td class=\"num\">{_ms(a.get('start_ms_approx'))}</td>"
            f"<td>{escape(str(a.get('end_state')))}</td>"
            f"<td class=\"num\">{_ms(a.get('end_ms_approx'))}</td>"
            f"<td class=\"num\">{_ms(a.get('start_to_end_ms'))}</td></tr>")
    rows.append("</table><p class=\"note\">ms after the host's hot-add call; ~ = guest clock "
                "mapped to host time.</p>")
    return "\n".join(rows)


def _links(v: ScenarioView, directory: Path) -> str:
    present = [name for name in ARTIFACTS if (v.run_dir / name).is_file()]
    rel = v.run_dir.relative_to(directory) if v.run_dir != directory else Path(".")
    links = " ".join(f'<a href="{escape(str(rel / name))}">{escape(name)}</a>'
                     for name in present)
    out = f'<p class="links">artifacts: {links}</p>'
    if "screenshot.png" in present:
        out += (f'<p><img class="shot" src="{escape(str(rel / "screenshot.png"))}" '
                'alt="the guest screen when the test failed"></p>')
    return out

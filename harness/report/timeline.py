"""The timeline picture of one run: host add, ACPI _OST, probe start/complete/failure, one lane
per processor, as inline SVG.

Hot-adds are hundreds of milliseconds apart while a replay takes a millisecond, so one linear
axis would squash what matters. The picture is split into panels, one per episode (the
registration replay, each hot-add, the unload, an add after unload), all sharing the lanes;
each panel's axis counts milliseconds from its own beginning (the host's setVcpu call for an
add), so a panel reads as "how long after the add did each answer come". Guest times are put
on the host's clock through the offset measured by round trips after the probe was loaded
(result.json `guest_clock`: `t0_host_wall` and its `uncertainty_ms`, shown in the note).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape

from harness.records import DriverRecord, NotifyRecord, NotifyState, Record
from harness.result_file import ResultAdd, ResultClock, ResultFile


class Mark(enum.Enum):
    HOST_ADD = "setVcpu"  # the host's hot-add call
    OST = "_OST"  # QEMU's ACPI_DEVICE_OST: the guest OS evaluated _OST for the new CPU
    START = "start"
    COMPLETE = "complete"
    FAILURE = "failure"
    DRIVER = "driver"  # probe life cycle: load, registered, deregistered, unload


class SpanKind(enum.Enum):
    COMPLETE = "complete"
    FAILURE = "failure"
    OPEN = "open"  # a start nothing closed
    WAIT = "wait"  # host add -> the guest's first answer


@dataclass(frozen=True)
class Lane:
    key: str
    title: str
    subtitle: str


@dataclass(frozen=True)
class Point:
    lane: str
    t_ms: float  # ms since the probe's load, on the host's clock
    mark: Mark
    label: str
    detail: str  # the tooltip
    findings: tuple[int, ...] = ()  # numbers of the findings naming this record
    failing: bool = False  # one of them fails the verdict (else they warn)


@dataclass(frozen=True)
class Span:
    lane: str
    t0_ms: float
    t1_ms: float | None  # None: to the end of the panel
    kind: SpanKind


@dataclass(frozen=True)
class Panel:
    """One episode: shows [t0_ms, t1_ms]; owns the events in [t0_ms, t_next_ms)."""

    title: str
    t0_ms: float
    t1_ms: float
    t_next_ms: float = math.inf

    def owns(self, t: float) -> bool:
        return self.t0_ms <= t < self.t_next_ms


@dataclass(frozen=True)
class Timeline:
    lanes: tuple[Lane, ...]
    panels: tuple[Panel, ...]
    points: tuple[Point, ...]
    spans: tuple[Span, ...]
    note: str  # how times were mapped, shown under the picture


PROBE_LANE = "probe"


def _lane_key(nt_number: int) -> str:
    return f"p{nt_number}"


def _status(value: int) -> str:
    return f"0x{value:08X}"


def _clock_offset(result: ResultFile, records: Sequence[Record]) -> float | None:
    """Host Unix time of guest t_ns == 0: stored by the run, or derived from an add."""
    if result.clock.t0_host_wall is not None:
        return result.clock.t0_host_wall
    starts = {r.nt_number: r for r in records if isinstance(r, NotifyRecord)
              and r.state is NotifyState.START}
    for add in result.adds:
        rec = starts.get(add.guest_index) if add.guest_index is not None else None
        if rec is not None and add.start_ms_approx is not None:
            return add.host_t_wall + add.start_ms_approx / 1000 - rec.t_ns / 1e9
    return None


def clock_note(clock: ResultClock) -> str:
    """How far to trust guest times mapped to the host clock, as measured by the run."""
    if clock.uncertainty_ms is None:
        return "through the offset taken at probe load (uncertainty not measured)"
    return (f"within ±{clock.uncertainty_ms:.1f} ms ({clock.samples} round "
            f"trips, fastest {clock.round_trip_ms or 0:.1f} ms"
            + ("" if clock.consistent else "; they disagreed: a clock jumped")
            + ")")


def _findings_by_seq(result: ResultFile) -> dict[int, tuple[tuple[int, ...], bool]]:
    out: dict[int, tuple[tuple[int, ...], bool]] = {}
    findings = result.verdict.findings if result.verdict else ()
    for number, finding in enumerate(findings, start=1):
        for seq in finding.seqs:
            numbers, failing = out.get(seq, ((), False))
            out[seq] = ((*numbers, number), failing or finding.severity == "fail")
    return out


def build_timeline(result: ResultFile, records: Sequence[Record]) -> Timeline:
    """The picture's content from a run's result file and its records."""
    flagged = _findings_by_seq(result)
    offset = _clock_offset(result, records)
    load = next((r for r in records if isinstance(r, DriverRecord)
                 and r.event.value == "load"), None)
    base_ns = load.t_ns if load is not None else (records[0].t_ns if records else 0)
    base_wall = offset + base_ns / 1e9 if offset is not None else None

    def guest_ms(t_ns: int) -> float:
        return (t_ns - base_ns) / 1e6

    def host_ms(t_wall: float) -> float | None:
        return None if base_wall is None else (t_wall - base_wall) * 1000

    lanes: dict[str, Lane] = {PROBE_LANE: Lane(PROBE_LANE, "probe", "driver life cycle")}
    points: list[Point] = []
    spans: list[Span] = []
    vcpu_of: dict[int, int] = {}
    adds = list(result.adds)
    for add in adds:
        if add.guest_index is not None:
            vcpu_of[add.guest_index] = add.libvirt_vcpu

    boot = {r.nt_number for r in records if isinstance(r, NotifyRecord)
            and r.phase.value == "replay"}
    for nt in sorted({r.nt_number for r in records if isinstance(r, NotifyRecord)}
                     | set(vcpu_of)):
        sub = (f"vCPU {vcpu_of[nt]} hot-added" if nt in vcpu_of
               else "online at load" if nt in boot else "")
        lanes[_lane_key(nt)] = Lane(_lane_key(nt), f"processor {nt}", sub)

    for r in records:
        number, failing = flagged.get(r.seq, ((), False))
        if isinstance(r, DriverRecord):
            extra = f" status {_status(r.status)}" if r.status is not None else ""
            points.append(Point(PROBE_LANE, guest_ms(r.t_ns), Mark.DRIVER, r.event.value,
                                f"seq {r.seq}: {r.event.value}{extra} at "
                                f"{guest_ms(r.t_ns):.3f} ms", number, failing))
            continue
        mark = {NotifyState.START: Mark.START, NotifyState.COMPLETE: Mark.COMPLETE,
                NotifyState.FAILURE: Mark.FAILURE}[r.state]
        label = r.state.value
        if r.state is NotifyState.START and r.op_status:
            label = f"start, veto {_status(r.op_status)}"
        elif r.state is NotifyState.FAILURE:
            label = f"failure {_status(r.status)}"
        points.append(Point(
            _lane_key(r.nt_number), guest_ms(r.t_ns), mark, label,
            f"seq {r.seq}: {r.phase.value} {r.state.value} of processor {r.nt_number} "
            f"(group {r.group}, number {r.number}) status {_status(r.status)} op_status "
            f"{_status(r.op_status)} active {r.active_count} irql {r.irql} at "
            f"{guest_ms(r.t_ns):.3f} ms", number, failing))

    for row in result.verdict.timeline if result.verdict else ():
        t0 = guest_ms(row.start_t_ns)
        end = row.end_state
        t1 = guest_ms(row.end_t_ns) if row.end_t_ns is not None else None
        kind = (SpanKind.COMPLETE if end == "complete" else SpanKind.FAILURE if end == "failure"
                else SpanKind.OPEN)
        spans.append(Span(_lane_key(row.nt_number), t0, t1, kind))

    panel_starts: list[tuple[float, str]] = [(0.0, "load and replay")]
    extra_adds: list[tuple[ResultAdd, bool]] = [(a, False) for a in adds]
    if result.add_after_unload is not None:
        extra_adds.append((result.add_after_unload, True))
    for add, after_unload in extra_adds:
        t = host_ms(add.host_t_wall)
        if t is None:
            continue
        vcpu = add.libvirt_vcpu
        gi = add.guest_index
        lane = _lane_key(gi) if gi is not None else f"v{vcpu}"
        if lane not in lanes:
            lanes[lane] = Lane(lane, f"vCPU {vcpu}",
                               "after unload: no record due" if after_unload
                               else "NO probe record")
        title = (f"add after unload: vCPU {vcpu}" if after_unload
                 else f"add {add.index}: vCPU {vcpu}")
        panel_starts.append((t, title))
        points.append(Point(lane, t, Mark.HOST_ADD, "setVcpu",
                            f"host {add.method} of vCPU {vcpu} "
                            f"(returned after {add.call_ms or 0:.1f} ms)"))
        if add.ost_ms is not None:
            status = add.ost_status
            points.append(Point(lane, t + add.ost_ms, Mark.OST,
                                "_OST" if status == 0 else f"_OST {status}",
                                f"ACPI _OST status {status} {add.ost_ms:.1f} ms after the "
                                "add"))
        if after_unload:
            continue  # nobody should answer but the guest's _OST
        first = add.start_ms_approx if gi is not None else None
        spans.append(Span(lane, t, t + first if first is not None else None,
                          SpanKind.WAIT))

    unload = [r for r in records if isinstance(r, DriverRecord)
              and r.event.value in ("deregistered", "unload")]
    if unload:
        panel_starts.append((guest_ms(unload[0].t_ns), "unload"))

    open_at = [s.t0_ms for s in spans if s.t1_ms is None]
    panels = _panels(panel_starts, [p.t_ms for p in points], open_at)
    note = ("times are ms after the start of each panel; guest times mapped to the host clock "
            f"{clock_note(result.clock)}"
            if base_wall is not None else
            "times are ms on the guest's clock since the probe's load (host times unknown)")
    return Timeline(tuple(lanes.values()), panels, tuple(points), tuple(spans), note)


def _panels(starts: list[tuple[float, str]], times: Iterable[float],
            open_at: Sequence[float]) -> tuple[Panel, ...]:
    """Cut the run into episodes; a panel where something never ended gets room to show it."""
    starts = sorted(starts)
    all_times = sorted(times)
    if all_times:
        starts[0] = (min(starts[0][0], all_times[0]), starts[0][1])
    panels: list[Panel] = []
    for i, (t0, title) in enumerate(starts):
        t_next = starts[i + 1][0] if i + 1 < len(starts) else math.inf
        inside = [t for t in all_times if t0 <= t < t_next]
        last = max(inside, default=t0)
        span = max(last - t0, 0.5)
        room = 1.7 if any(t0 <= t < t_next for t in open_at) else 1.1
        panels.append(Panel(title, t0, t0 + span * room, t_next))
    return tuple(panels)


# --- SVG ---------------------------------------------------------------------------------------

WIDTH = 1100
GUTTER = 150
LANE_H = 64
TOP = 44
GAP = 16
COLORS = {
    "start": "#1f4e79", "complete": "#2e7d32", "failure": "#c62828", "open": "#ef6c00",
    "host": "#1565c0", "ost": "#6a1b9a", "driver": "#455a64", "wait": "#90a4ae",
    "flag": "#d50000", "grid": "#e0e0e0",
}


def _nice_step(span: float) -> float:
    raw = span / 4
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for mult in (1, 2, 5, 10):
        if mult * power >= raw:
            return mult * power
    return 10 * power


def _fmt_ms(v: float) -> str:
    if v == 0:
        return "0"
    return f"{v:.0f}" if abs(v) >= 10 else f"{v:.1f}" if abs(v) >= 1 else f"{v:.2f}"


class _Labels:
    """Greedy placement of small labels in rows above/below a lane, avoiding overlaps."""

    def __init__(self) -> None:
        self.used: dict[tuple[str, int], list[tuple[float, float]]] = {}

    def place(self, lane: str, x: float, text: str, rows: Sequence[int]) -> int:
        width = 6.2 * len(text) + 4
        lo, hi = x - width / 2, x + width / 2
        for row in rows:
            taken = self.used.setdefault((lane, row), [])
            if all(hi < a or lo > b for a, b in taken):
                taken.append((lo, hi))
                return row
        self.used.setdefault((lane, rows[-1]), []).append((lo, hi))
        return rows[-1]


def render_svg(tl: Timeline, title: str = "") -> str:
    """The picture as an inline `<svg>` element (no scripts; tooltips via <title>)."""
    lanes = list(tl.lanes)
    lane_y = {lane.key: TOP + 18 + i * LANE_H + LANE_H / 2 for i, lane in enumerate(lanes)}
    height = TOP + 18 + len(lanes) * LANE_H + 40 + 46
    n = max(len(tl.panels), 1)
    panel_w = (WIDTH - GUTTER - 10 - GAP * (n - 1)) / n
    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{WIDTH}" '
        f'height="{height}" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-label="{escape(title or "timeline")}" font-family="sans-serif" font-size="11">',
        '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="3" height="6" '
        f'fill="{COLORS["open"]}"/></pattern></defs>',
    ]
    for i, lane in enumerate(lanes):
        y = lane_y[lane.key]
        fill = "#f7f9fb" if i % 2 == 0 else "#ffffff"
        out.append(f'<rect x="0" y="{y - LANE_H / 2:.1f}" width="{WIDTH}" height="{LANE_H}" '
                   f'fill="{fill}"/>')
        out.append(f'<text x="8" y="{y - 2:.1f}" font-weight="bold" font-size="12">'
                   f'{escape(lane.title)}</text>')
        if lane.subtitle:
            out.append(f'<text x="8" y="{y + 12:.1f}" fill="#555">{escape(lane.subtitle)}</text>')

    labels = _Labels()
    axis_y = TOP + 18 + len(lanes) * LANE_H + 6
    for pi, panel in enumerate(tl.panels):
        x0 = GUTTER + pi * (panel_w + GAP)
        span = panel.t1_ms - panel.t0_ms

        def x_of(t: float, x0: float = x0, panel: Panel = panel, span: float = span) -> float:
            return x0 + (min(max(t, panel.t0_ms), panel.t1_ms) - panel.t0_ms) / span * panel_w

        out.append(f'<text x="{x0 + panel_w / 2:.1f}" y="{TOP - 22}" text-anchor="middle" '
                   f'font-weight="bold" font-size="12">{escape(panel.title)}</text>')
        out.append(f'<text x="{x0 + panel_w / 2:.1f}" y="{TOP - 8}" text-anchor="middle" '
                   f'fill="#666">at {panel.t0_ms:.1f} ms after load</text>')
        step = _nice_step(span)
        tick = 0.0
        while tick <= span + 1e-9:
            x = x0 + tick / span * panel_w
            out.append(f'<line x1="{x:.1f}" y1="{TOP + 12}" x2="{x:.1f}" y2="{axis_y}" '
                       f'stroke="{COLORS["grid"]}"/>')
            if x0 + panel_w - x > 18 or pi == len(tl.panels) - 1:
                out.append(f'<text x="{x:.1f}" y="{axis_y + 14}" text-anchor="middle" '
                           f'fill="#444">+{_fmt_ms(tick)}</text>')
            tick += step
        out.append(f'<line x1="{x0:.1f}" y1="{axis_y}" x2="{x0 + panel_w:.1f}" y2="{axis_y}" '
                   'stroke="#444"/>')
        out.append(f'<text x="{x0 + panel_w:.1f}" y="{axis_y + 28}" text-anchor="end" '
                   'fill="#444">ms</text>')
        if pi > 0:
            gx = x0 - GAP / 2
            out.append(f'<line x1="{gx:.1f}" y1="{TOP + 8}" x2="{gx:.1f}" y2="{axis_y + 4}" '
                       'stroke="#9e9e9e" stroke-dasharray="2,3"/>')

        for s in tl.spans:
            if s.lane not in lane_y or not panel.owns(s.t0_ms):
                continue
            y = lane_y[s.lane]
            xa = x_of(s.t0_ms)
            xb = x_of(s.t1_ms) if s.t1_ms is not None else x0 + panel_w
            if s.kind is SpanKind.WAIT:
                out.append(f'<line x1="{xa:.1f}" y1="{y:.1f}" x2="{xb:.1f}" y2="{y:.1f}" '
                           f'stroke="{COLORS["wait"]}" stroke-width="2" '
                           'stroke-dasharray="4,3"/>')
                if s.t1_ms is None:
                    out.append(_end_label(labels, s.lane, xb, y, "no probe start",
                                          COLORS["failure"]))
                continue
            fill = {SpanKind.COMPLETE: COLORS["complete"], SpanKind.FAILURE: COLORS["failure"],
                    SpanKind.OPEN: "url(#hatch)"}[s.kind]
            out.append(f'<rect x="{xa:.1f}" y="{y - 4:.1f}" width="{max(xb - xa, 1):.1f}" '
                       f'height="8" rx="2" fill="{fill}" opacity="0.55"/>')
            if s.kind is SpanKind.OPEN:
                out.append(_end_label(labels, s.lane, xb, y, "no complete/failure",
                                      COLORS["open"]))
        for p in tl.points:
            if p.lane not in lane_y or not panel.owns(p.t_ms):
                continue
            out.append(_glyph(p, x_of(p.t_ms), lane_y[p.lane], (x0, x0 + panel_w), panel,
                              labels))
    out.append(_legend(height - 26))
    out.append("</svg>")
    return "\n".join(out)


def _end_label(labels: _Labels, lane: str, x_end: float, y: float, text: str,
               color: str) -> str:
    """A bold label ending at `x_end`, low in the lane (what never happened); the badges of
    findings sit above the line, the marks' own labels just below it."""
    width = 6.8 * len(text)
    row = labels.place(lane, x_end - 2 - width / 2, text, (2, 1))
    ty = y + 19 + 11 * (row - 1)
    return (f'<text x="{x_end - 2:.1f}" y="{ty:.1f}" text-anchor="end" fill="{color}" '
            f'font-weight="bold">{escape(text)}</text>')


def _glyph(p: Point, x: float, y: float, bounds: tuple[float, float], panel: Panel,
           labels: _Labels) -> str:
    rel = f"+{_fmt_ms(p.t_ms - panel.t0_ms)}"
    parts = [f"<g><title>{escape(p.detail)}</title>"]
    if p.mark is Mark.HOST_ADD:
        parts.append(f'<line x1="{x:.1f}" y1="{y - LANE_H / 2 + 2:.1f}" x2="{x:.1f}" '
                     f'y2="{y + LANE_H / 2 - 2:.1f}" stroke="{COLORS["host"]}" '
                     'stroke-dasharray="3,2"/>')
        parts.append(f'<path d="M{x - 6:.1f},{y - 13:.1f} L{x + 6:.1f},{y - 13:.1f} '
                     f'L{x:.1f},{y - 4:.1f} Z" fill="{COLORS["host"]}"/>')
    elif p.mark is Mark.OST:
        parts.append(f'<path d="M{x:.1f},{y - 6:.1f} L{x + 6:.1f},{y:.1f} L{x:.1f},'
                     f'{y + 6:.1f} L{x - 6:.1f},{y:.1f} Z" fill="{COLORS["ost"]}"/>')
    elif p.mark is Mark.START:
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="white" '
                     f'stroke="{COLORS["start"]}" stroke-width="2"/>')
    elif p.mark is Mark.COMPLETE:
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5.5" fill="{COLORS["complete"]}"/>')
    elif p.mark is Mark.FAILURE:
        parts.append(f'<path d="M{x - 6:.1f},{y - 6:.1f} L{x + 6:.1f},{y + 6:.1f} '
                     f'M{x + 6:.1f},{y - 6:.1f} L{x - 6:.1f},{y + 6:.1f}" '
                     f'stroke="{COLORS["failure"]}" stroke-width="3"/>')
    else:
        parts.append(f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" '
                     f'fill="{COLORS["driver"]}"/>')
    if p.findings:
        color = COLORS["flag"] if p.failing else COLORS["open"]
        badge = ",".join(f"F{n}" for n in p.findings)
        w = 7 * len(badge) + 8
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="10" fill="none" stroke="{color}" '
                     'stroke-width="2.5"/>')
        parts.append(f'<rect x="{x + 7:.1f}" y="{y - 23:.1f}" width="{w}" height="14" rx="3" '
                     f'fill="{color}"/><text x="{x + 7 + w / 2:.1f}" y="{y - 12:.1f}" '
                     f'text-anchor="middle" fill="white" font-weight="bold">{badge}</text>')
    host_side = p.mark in (Mark.HOST_ADD, Mark.OST)
    text = p.label if p.mark is Mark.DRIVER else f"{p.label} {rel}"
    width = 6.2 * len(text)
    anchor, centre = "middle", x
    if x - width / 2 < bounds[0] - 4:
        anchor, centre = "start", x + width / 2 - 4
    elif x + width / 2 > bounds[1] + 4:
        anchor, centre = "end", x - width / 2 + 4
    row = labels.place(p.lane, centre, text, (-1, -2) if host_side else (1, 2))
    ty = y + (-16 - 11 * (abs(row) - 1) if row < 0 else 19 + 11 * (row - 1))
    tx = x - 4 if anchor == "start" else x + 4 if anchor == "end" else x
    color = {Mark.HOST_ADD: COLORS["host"], Mark.OST: COLORS["ost"],
             Mark.FAILURE: COLORS["failure"], Mark.COMPLETE: COLORS["complete"]}.get(
        p.mark, "#333")
    parts.append(f'<text x="{tx:.1f}" y="{ty:.1f}" text-anchor="{anchor}" fill="{color}">'
                 f'{escape(text)}</text></g>')
    return "".join(parts)


def _legend(y: float) -> str:
    items = [
        (f'<path d="M-6,-7 L6,-7 L0,2 Z" fill="{COLORS["host"]}"/>', "host hot-add (setVcpu)"),
        (f'<path d="M0,-6 L6,0 L0,6 L-6,0 Z" fill="{COLORS["ost"]}"/>', "ACPI _OST (QEMU)"),
        (f'<circle r="5" fill="white" stroke="{COLORS["start"]}" stroke-width="2"/>',
         "probe start"),
        (f'<circle r="5.5" fill="{COLORS["complete"]}"/>', "probe complete"),
        (f'<path d="M-6,-6 L6,6 M6,-6 L-6,6" stroke="{COLORS["failure"]}" stroke-width="3"/>',
         "probe failure"),
        ('<rect x="-4" y="-4" width="8" height="8" fill="#455a64"/>', "probe life cycle"),
        ('<rect x="-10" y="-4" width="20" height="8" fill="url(#hatch)"/>', "start never closed"),
        (f'<circle r="9" fill="none" stroke="{COLORS["flag"]}" stroke-width="2.5"/>',
         "named by finding Fn"),
    ]
    out = [f'<g transform="translate({GUTTER - 130},{y})">']
    x = 10.0
    for glyph, text in items:
        out.append(f'<g transform="translate({x:.0f},0)">{glyph}</g>'
                   f'<text x="{x + 14:.0f}" y="4" fill="#333">{escape(text)}</text>')
        x += 24 + 6.2 * len(text) + 10
    out.append("</g>")
    return "".join(out)

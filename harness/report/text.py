"""A run's outcome as text for a terminal or a CI log (`hotadd run`, pytest failures)."""

from __future__ import annotations

from harness.oracle import render_verdict
from harness.result import RunResult


def render_adds(result: RunResult) -> str:
    """The host side of each add: libvirt call -> _OST -> probe start -> complete/failure."""
    if not result.adds:
        return "hot-adds: none performed"
    clock = (f", ±{result.clock.uncertainty_s * 1000:.1f} ms" if result.clock else "")
    lines = [f"hot-adds (ms after the host's setVcpu; ~ = guest clock mapped to host time{clock}):",
             f"  {'#':>2} {'vCPU':>4} {'socket/core/thread':>18} {'_OST':>12} "
             f"{'start':>10} {'end':>18} {'start->end':>10} {'known after end':>20}"]
    for a in result.adds:
        s = a.plugged.slot
        ost = (f"{a.ost_ms:.1f} ({a.ost_status})" if a.ost_ms is not None else "none")
        start = f"~{a.start_ms_approx:.1f}" if a.start_ms_approx is not None else "-"
        end = (f"{a.end_state} ~{a.end_ms_approx:.1f}" if a.end_ms_approx is not None
               else a.end_state)
        took = f"{a.start_to_end_ms:.1f}" if a.start_to_end_ms is not None else "-"
        gap = a.known_gap_ms
        known = f"{gap:.1f} ({a.known_via})" if gap is not None else a.known_via
        lines.append(f"  {a.index:>2} {a.plugged.libvirt_id:>4} "
                     f"{f'{s.socket_id}/{s.core_id}/{s.thread_id}':>18} {ost:>12} {start:>10} "
                     f"{end:>18} {took:>10} {known:>20}")
    return "\n".join(lines)


def render_result(result: RunResult) -> str:
    """Adds, verdict with findings, failed host checks, timings, error and outcome."""
    parts = [render_adds(result)]
    if result.load_window is not None:
        parts.append(result.load_window.describe())
    if result.verdict is not None:
        parts.append(render_verdict(result.verdict))
    if result.driver is not None:
        parts.append(result.driver.describe())
    failed = [c for c in result.host_checks if not c.passed]
    parts.append("host checks: " + ("all passed" if not failed else "\n" + "\n".join(
        f"  [{c.severity.value}] {c.check_id}: {c.message}" for c in failed)))
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
    parts.append(f"timings: {timings}")
    if result.start is not None:
        parts.append(result.start.describe())
    if result.error:
        parts.append(f"error: {result.error}")
    outcome = result.outcome.value.upper()
    parts.append(f"result: {outcome} (exit {int(result.exit_code)}); artifacts in {result.run_dir}")
    return "\n\n".join(parts)

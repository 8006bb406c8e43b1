"""Run every check of a profile over a record list and assemble the verdict and timeline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from harness.oracle.checks import CHECKS, MAX_REPORTS_PER_RULE, Context, Hit
from harness.oracle.host import HostFacts
from harness.oracle.rules import RULES_BY_ID, Profile, Severity
from harness.oracle.trace import Trace, build_trace, pair_up
from harness.oracle.verdict import Finding, ProcessorTimeline, Verdict
from harness.records import Phase, Record


def processor_timelines(trace: Trace) -> tuple[ProcessorTimeline, ...]:
    """One row per Start (replay, then hot-adds) with what closed it and how long it took."""
    rows: list[ProcessorTimeline] = []
    for phase, notifies in ((Phase.REPLAY, trace.replay), (Phase.HOTADD, trace.hotadd)):
        for ep in pair_up(notifies).episodes:
            start, close = ep.start, ep.close
            rows.append(ProcessorTimeline(
                nt_number=start.nt_number, group=start.group, number=start.number, phase=phase,
                start_t_ns=start.t_ns, end_state=close.state if close else None,
                end_t_ns=close.t_ns if close else None,
                latency_ns=close.t_ns - start.t_ns if close else None,
                status=close.status if close else None,
            ))
    return tuple(rows)


def _capped(hits: list[Hit]) -> list[Hit]:
    """At most MAX_REPORTS_PER_RULE hits per rule; the last kept one says how many were cut."""
    kept: list[Hit] = []
    per_rule: dict[str, int] = {}
    for hit in hits:
        per_rule[hit.rule_id] = per_rule.get(hit.rule_id, 0) + 1
        if per_rule[hit.rule_id] <= MAX_REPORTS_PER_RULE:
            kept.append(hit)
    for rule_id, total in per_rule.items():
        if total > MAX_REPORTS_PER_RULE:
            last = max(i for i, h in enumerate(kept) if h.rule_id == rule_id)
            more = total - MAX_REPORTS_PER_RULE
            kept[last] = replace(kept[last], message=f"{kept[last].message} "
                                 f"(and {more} more like this)")
    return kept


def check(records: Sequence[Record], profile: Profile, host: HostFacts | None = None) -> Verdict:
    """Judge a probe's records by a profile's rules (and the host's counts, when given)."""
    trace = build_trace(records)
    ctx = Context(trace, profile, host)
    hits = [hit for run in CHECKS for hit in run(ctx)
            if profile in RULES_BY_ID[hit.rule_id].profiles]
    findings = tuple(
        Finding(h.rule_id, RULES_BY_ID[h.rule_id].severity_in(profile), h.message, h.seqs)
        for h in sorted(_capped(hits), key=lambda h: min(h.seqs, default=0)))
    return Verdict(
        passed=all(f.severity is not Severity.FAIL for f in findings),
        findings=findings, timeline=processor_timelines(trace), profile=profile,
        record_count=len(trace.records),
    )

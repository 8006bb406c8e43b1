"""What the oracle hands back: findings, the per-processor timeline, and the verdict.

`Verdict.to_dict()` is the JSON shape written into result.json and printed by
`hotadd check --json` (schema "hotadd.verdict/1", described in docs/oracle-rules.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.oracle.rules import RULES_BY_ID, Profile, Severity, rules_for
from harness.records import NotifyState, Phase

VERDICT_SCHEMA = "hotadd.verdict/1"


@dataclass(frozen=True)
class Finding:
    """One broken rule: which, how bad, in words, and the `seq` of the records involved."""

    rule_id: str
    severity: Severity
    message: str
    seqs: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        rule = RULES_BY_ID[self.rule_id]
        return {"rule_id": self.rule_id, "severity": self.severity.value,
                "source": rule.source.value, "statement": rule.statement,
                "message": self.message, "seqs": list(self.seqs)}


@dataclass(frozen=True)
class ProcessorTimeline:
    """One Start and what closed it. end_state None: never closed (e.g. a vetoed replay Start)."""

    nt_number: int
    group: int
    number: int
    phase: Phase
    start_t_ns: int
    end_state: NotifyState | None
    end_t_ns: int | None
    latency_ns: int | None
    status: int | None  # the closing record's Status

    def to_dict(self) -> dict[str, Any]:
        return {"nt_number": self.nt_number, "group": self.group, "number": self.number,
                "phase": self.phase.value, "start_t_ns": self.start_t_ns,
                "end_state": self.end_state.value if self.end_state else None,
                "end_t_ns": self.end_t_ns, "latency_ns": self.latency_ns, "status": self.status}


@dataclass(frozen=True)
class Verdict:
    """passed is False exactly when some finding has severity fail."""

    passed: bool
    findings: tuple[Finding, ...]
    timeline: tuple[ProcessorTimeline, ...]
    profile: Profile = Profile.WINDOWS
    record_count: int = 0
    timeline_omitted: int = 0  # rows past the timeline's cap (a trace of thousands of adds)

    def __post_init__(self) -> None:
        if self.passed != all(f.severity is not Severity.FAIL for f in self.findings):
            raise ValueError("Verdict.passed must be False exactly when a finding fails")

    def count(self, severity: Severity) -> int:
        return sum(1 for f in self.findings if f.severity is severity)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": VERDICT_SCHEMA,
            "verdict": "pass" if self.passed else "fail",
            "passed": self.passed,
            "profile": self.profile.value,
            "records": self.record_count,
            "counts": {s.value: self.count(s) for s in Severity},
            "rules_checked": [rule.id for rule in rules_for(self.profile)],
            "findings": [f.to_dict() for f in self.findings],
            "timeline": [t.to_dict() for t in self.timeline],
        } | ({"timeline_omitted": self.timeline_omitted} if self.timeline_omitted else {})


def _ms(t_ns: int | None) -> str:
    return "-" if t_ns is None else f"{t_ns / 1e6:.3f}"


def render_verdict(verdict: Verdict) -> str:
    """A readable rendering for a terminal or a CI log."""
    head = (f"verdict: {'PASS' if verdict.passed else 'FAIL'} (profile {verdict.profile.value}, "
            f"{verdict.record_count} records, {verdict.count(Severity.FAIL)} fail, "
            f"{verdict.count(Severity.WARN)} warn)")
    lines = [head]
    if verdict.findings:
        lines.append("findings:")
    for f in verdict.findings:
        rule = RULES_BY_ID[f.rule_id]
        seqs = ", ".join(str(s) for s in f.seqs) or "-"
        lines.append(f"  {f.severity.value.upper():4} {f.rule_id} [{rule.source.value}] "
                     f"seq {seqs}: {f.message}")
    if verdict.timeline:
        lines.append("timeline (ms since probe load):")
        lines.append(f"  {'nt':>4} {'grp:num':>7} {'phase':6} {'start':>10} {'closed by':9} "
                     f"{'at':>10} {'latency':>9} status")
        for t in verdict.timeline:
            end = t.end_state.value if t.end_state else "(open)"
            status = "-" if t.status is None else f"0x{t.status:08X}"
            lines.append(f"  {t.nt_number:>4} {f'{t.group}:{t.number}':>7} {t.phase.value:6} "
                         f"{_ms(t.start_t_ns):>10} {end:9} {_ms(t.end_t_ns):>10} "
                         f"{_ms(t.latency_ns):>9} {status}")
    if verdict.timeline_omitted:
        lines.append(f"  ... and {verdict.timeline_omitted} more rows (not kept)")
    return "\n".join(lines) + "\n"

"""The ordering oracle: do a probe's records show the notifications Windows promises?

`check(records, profile, host)` returns a `Verdict` (findings with rule ids, and a
per-processor timeline). The rules are data (`harness.oracle.rules`, documented in
docs/oracle-rules.md); `harness.oracle.model` generates valid traces of the protocol.
"""

from harness.oracle.engine import check, processor_timelines
from harness.oracle.host import HostFacts
from harness.oracle.rules import RULES, RULES_BY_ID, Profile, Rule, Severity, Source, rules_for
from harness.oracle.verdict import (
    VERDICT_SCHEMA,
    Finding,
    ProcessorTimeline,
    Verdict,
    render_verdict,
)

__all__ = [
    "RULES",
    "RULES_BY_ID",
    "VERDICT_SCHEMA",
    "Finding",
    "HostFacts",
    "ProcessorTimeline",
    "Profile",
    "Rule",
    "Severity",
    "Source",
    "Verdict",
    "check",
    "processor_timelines",
    "render_verdict",
    "rules_for",
]

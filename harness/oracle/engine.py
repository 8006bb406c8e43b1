"""Stream a record sequence through every check of a profile, once, and assemble the verdict
and timeline.

Linear in the records and bounded in memory whatever the trace's length: the checks keep
counts and per-processor state, findings are capped per rule (the count of the rest is kept)
and the timeline at MAX_TIMELINE rows (the count of the rest is kept).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from harness.oracle.checks import CHECKS, MAX_REPORTS_PER_RULE, Check, Context, Hit
from harness.oracle.host import HostFacts
from harness.oracle.rules import RULES_BY_ID, Profile, Severity
from harness.oracle.trace import Episode, Landmarks, Pairer, Section
from harness.oracle.verdict import Finding, ProcessorTimeline, Verdict
from harness.records import NotifyRecord, Phase, Record

#: Timeline rows kept (one per Start, replay first); a real run has a handful.
MAX_TIMELINE = 4096
_PHASE = {Section.REPLAY: Phase.REPLAY, Section.HOTADD: Phase.HOTADD}


@dataclass
class _Hits:
    """The first MAX_REPORTS_PER_RULE hits of each rule, and how many there were in all."""

    profile: Profile
    kept: list[tuple[int, int, int, Hit]] = field(default_factory=list)  # (seq, check, n, hit)
    totals: dict[str, int] = field(default_factory=dict)

    def add(self, check: int, hits: Iterator[Hit]) -> None:
        for hit in hits:
            if self.profile not in RULES_BY_ID[hit.rule_id].profiles:
                continue
            total = self.totals[hit.rule_id] = self.totals.get(hit.rule_id, 0) + 1
            if total <= MAX_REPORTS_PER_RULE:
                self.kept.append((min(hit.seqs, default=0), check, len(self.kept), hit))

    def findings(self) -> tuple[Finding, ...]:
        """In seq order (ties: check order); the last kept hit of a capped rule says how many
        more there were."""
        last = {h.rule_id: i for i, (_, _, _, h) in enumerate(self.kept)}
        out = []
        for i, (seq, check, n, hit) in enumerate(self.kept):
            more = self.totals[hit.rule_id] - MAX_REPORTS_PER_RULE
            if more > 0 and last[hit.rule_id] == i:
                hit = replace(hit, message=f"{hit.message} (and {more} more like this)")
            out.append((seq, check, n, hit))
        return tuple(Finding(h.rule_id, RULES_BY_ID[h.rule_id].severity_in(self.profile),
                             h.message, h.seqs) for _, _, _, h in sorted(out))


@dataclass
class _Timeline:
    """One row per Start (replay, then hot-adds, each in Start order), the first MAX_TIMELINE.

    A row's rank is (its section, its Start's number in that section): a hot-add in the
    registration window may arrive before the replay's last Start, so the replay's count is
    not final when hot-add rows come. Each section keeps its first MAX_TIMELINE rows (at most
    twice the cap held); the table is the first MAX_TIMELINE of them."""

    rows: list[tuple[tuple[int, int], ProcessorTimeline]] = field(default_factory=list)
    total: int = 0

    def add(self, ep: Episode, where: Section) -> None:
        self.total += 1
        if ep.number >= MAX_TIMELINE:
            return
        start, close = ep.start, ep.close
        self.rows.append(((where is Section.HOTADD, ep.number), ProcessorTimeline(
            nt_number=start.nt_number, group=start.group, number=start.number,
            phase=_PHASE[where], start_t_ns=start.t_ns,
            end_state=close.state if close else None, end_t_ns=close.t_ns if close else None,
            latency_ns=close.t_ns - start.t_ns if close else None,
            status=close.status if close else None)))

    def ordered(self) -> tuple[ProcessorTimeline, ...]:
        return tuple(row for _, row in sorted(self.rows, key=lambda t: t[0])[:MAX_TIMELINE])


def check(records: Iterable[Record], profile: Profile, host: HostFacts | None = None) -> Verdict:
    """Judge a probe's records by a profile's rules (and the host's counts, when given).

    `records` may be any iterable, e.g. `iter_record_file(path)`: it is read once, in order."""
    ctx = Context(Landmarks(), profile, host)
    checks: list[Check] = [make() for make in CHECKS]
    hits = _Hits(profile)
    timeline = _Timeline()
    pairers = {Section.REPLAY: Pairer(), Section.HOTADD: Pairer()}

    # only the checks that use a hook are called for it (a call per record per check is
    # most of the oracle's time)
    on_record, on_episode, on_orphan = (
        [(i, c) for i, c in enumerate(checks) if getattr(type(c), hook) is not getattr(Check, hook)]
        for hook in ("record", "episode", "orphan"))

    def ended(ep: Episode, where: Section) -> None:
        timeline.add(ep, where)
        for i, c in on_episode:
            hits.add(i, c.episode(ctx, ep, where))

    for record in records:
        ctx.marks.see(record)
        where = ctx.marks.section_of(record) if isinstance(record, NotifyRecord) else None
        if isinstance(record, NotifyRecord) and where is Section.REPLAY:
            ctx.keep_replay(record)
        for i, c in on_record:
            hits.add(i, c.record(ctx, record, where))
        if isinstance(record, NotifyRecord) and where in pairers:
            assert where is not None
            done, orphan = pairers[where].feed(record)
            for ep in done:
                ended(ep, where)
            if orphan:
                for i, c in on_orphan:
                    hits.add(i, c.orphan(ctx, record, where))
    for where, pairer in pairers.items():
        for ep in pairer.finish():
            ended(ep, where)
    for i, c in enumerate(checks):
        hits.add(i, c.finish(ctx))
    findings = hits.findings()
    rows = timeline.ordered()
    return Verdict(
        passed=all(f.severity is not Severity.FAIL for f in findings),
        findings=findings, timeline=rows, profile=profile,
        record_count=ctx.marks.records, timeline_omitted=timeline.total - len(rows),
    )


def processor_timelines(records: Iterable[Record]) -> tuple[ProcessorTimeline, ...]:
    """One row per Start (replay, then hot-adds) with what closed it and how long it took."""
    return check(records, Profile.WINDOWS).timeline


"""The oracle's rules as data: id, one-line statement, source of the fact, severity per profile.

The checks (`harness.oracle.checks`) only say which rule a problem breaks; whether that fails
the verdict or only warns is decided here, per profile, so the Linux differences are visible
in one table (and rendered into `docs/oracle-rules.md` by `rules_markdown`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class Profile(enum.Enum):
    """Whose semantics the trace is judged by: a Windows probe, or the Linux reference probe."""

    WINDOWS = "windows"
    LINUX = "linux"


class Source(enum.Enum):
    """Where a rule's fact comes from (the tags of docs/processor-change-semantics.md)."""

    DOC = "doc"  # Microsoft documentation
    RE = "re"  # third-party reverse engineering: plausible, not authoritative
    OPEN = "open"  # nobody has confirmed it; the harness exists to observe it
    FORMAT = "format"  # the record format's own contract (docs/record-format.md)


class Severity(enum.Enum):
    FAIL = "fail"  # fails the verdict
    WARN = "warn"  # reported, the verdict still passes


@dataclass(frozen=True)
class Rule:
    """One rule. `linux` overrides the severity for the linux profile, with the reason why."""

    id: str
    statement: str
    source: Source
    severity: Severity
    profiles: frozenset[Profile] = field(default=frozenset(Profile))
    linux: tuple[Severity, str] | None = None

    def __post_init__(self) -> None:
        if self.source in (Source.RE, Source.OPEN) and self.severity is Severity.FAIL:
            raise ValueError(f"rule {self.id}: a {self.source.value} fact can only warn")

    def severity_in(self, profile: Profile) -> Severity:
        if profile is Profile.LINUX and self.linux is not None:
            return self.linux[0]
        return self.severity


_F, _W = Severity.FAIL, Severity.WARN
_WINDOWS_ONLY = frozenset({Profile.WINDOWS})
_LINUX_ONLY = frozenset({Profile.LINUX})

RULES: tuple[Rule, ...] = (
    Rule("seq.complete", "seq runs 1, 2, 3, ... in file order: no gap, repeat or reordering",
         Source.FORMAT, _F),
    Rule("seq.first_load", "the first record is the driver's load", Source.FORMAT, _F),
    Rule("records.none_dropped",
         'no record was lost: no "dropped" line (the Windows probe\'s record ring overflowed)',
         Source.FORMAT, _F),
    Rule("time.monotonic", "t_ns never decreases from one record to the next", Source.FORMAT, _F),
    Rule("driver.order",
         "driver events run load, registered or register_failed, [deregistered], [unload], each "
         "once, and nothing follows unload", Source.FORMAT, _F),
    Rule("driver.deregister_before_unload",
         "a registered callback is deregistered before the driver unloads", Source.DOC, _F),
    Rule("driver.register_failed_status",
         "register_failed carries an error status (DriverEntry fails)", Source.DOC, _F),
    Rule("phase.label",
         'a notify after the register call returned says phase "hotadd" (inside it the label '
         "is the probe's: replay on the registering thread, hotadd on any other)",
         Source.FORMAT, _F),
    Rule("replay.not_interleaved",
         "no hot-add notification arrives between the replay's first and last record (a hot-add "
         "inside the register call comes after the replay, if at all)", Source.RE, _W,
         linux=(_F, "cpuhp_setup_state() replays under cpus_read_lock(), which cpu_up() "
                "waits for")),
    Rule("replay.none_without_flag",
         "without KE_PROCESSOR_CHANGE_ADD_EXISTING the register call delivers no notify",
         Source.DOC, _F),
    Rule("replay.active_at_registration",
         "the replay runs with the load record's active_count; more only by hot-adds the host "
         "had in flight during the load (HostFacts.adds_during_load), at most that many: each "
         "came online before the register call and belongs to the replay", Source.RE, _W,
         linux=(_F, "the load record and cpus_read_lock() are microseconds apart, and a "
                "cpu_up() in flight holds cpus_write_lock() until the CPU is online")),
    Rule("replay.starts",
         "with ADD_EXISTING the replay gives Start to distinct active processors, all before any "
         "Complete; without a veto to every one of the N active when it ran (the load count, "
         "or the replay's own count when replay.active_at_registration allows it)",
         Source.DOC, _F),
    Rule("replay.ascending", "the replay visits processors in ascending nt_number 0..N-1",
         Source.RE, _W,
         linux=(_F, "cpuhp_setup_state() walks for_each_present_cpu(), which ascends")),
    Rule("replay.completes",
         "without a veto every replayed processor then gets exactly one Complete, and no Failure",
         Source.DOC, _F),
    Rule("replay.veto_stops", "after a replay Start is vetoed no further replay Start follows",
         Source.DOC, _F),
    Rule("replay.veto_failures",
         "after a replay veto every processor that got Start gets one Failure, except the vetoed "
         "one, and none gets Complete", Source.DOC, _F),
    Rule("replay.veto_register_failed",
         "after a replay veto the register call fails (register_failed, not registered)",
         Source.RE, _W,
         linux=(_F, "cpuhp_setup_state() returns the startup error after its rollback")),
    Rule("hotadd.pair",
         "each hot-add Start is closed by exactly one Complete or Failure for the same nt_number; "
         "no Complete or Failure without an open Start", Source.DOC, _F),
    Rule("hotadd.serialized",
         "one hot-add's Start..Complete/Failure is not interleaved with another's", Source.RE, _W,
         linux=(_F, "cpu_up() runs under cpu_add_remove_lock: one hot-add at a time")),
    Rule("hotadd.veto_honoured",
         "a vetoed hot-add Start is never followed by Complete for that processor", Source.DOC, _F),
    Rule("hotadd.veto_failure",
         "a vetoed hot-add Start is closed by a Failure carrying the veto status", Source.RE, _W,
         linux=(_F, "the probe writes this Failure itself right after the vetoed Start")),
    Rule("op_status.only_on_start",
         "the probe writes *OperationStatus (op_status) only during Start, and only an error "
         "status", Source.DOC, _F),
    Rule("op_status.found_on_entry",
         "the callback finds *OperationStatus = 0 on entry (op_status_in): an observation of "
         "what the kernel or another driver left there, never blamed on the probe",
         Source.OPEN, _W,
         linux=(_F, "a cpuhp callback has no *OperationStatus: the probe always writes 0")),
    Rule("status.failure_error", "a Failure carries an error status in Status", Source.DOC, _F),
    Rule("status.success_zero", "Start and Complete carry Status 0 (STATUS_SUCCESS)",
         Source.OPEN, _W, linux=(_F, "the probe writes 0 in every start and complete")),
    Rule("index.unused",
         "a hot-added processor's nt_number is not one already active", Source.DOC, _F),
    Rule("index.next_free",
         "a hot-added processor gets the next free nt_number (the lowest not active)", Source.RE,
         _W, linux=(_W, "Linux does not promise it; QEMU's arrival order makes it hold")),
    Rule("procnum.consistent",
         "(group, number) is the same in every record of an nt_number and unique across "
         "processors; on Windows number < 64 (a group's size)", Source.DOC, _F),
    Rule("procnum.matches_index",
         "outside a hot-add Start, KeGetProcessorNumberFromIndex(nt_number) succeeds and gives "
         "the record's (group, number) (checked where the probe wrote map_status/map_group/"
         "map_number)", Source.DOC, _F, profiles=_WINDOWS_ONLY),
    Rule("procnum.index_during_start",
         "during a hot-add Start, KeGetProcessorNumberFromIndex(nt_number) already succeeds and "
         "gives the record's (group, number)", Source.OPEN, _W, profiles=_WINDOWS_ONLY),
    Rule("count.never_decreases", "active_count never decreases", Source.DOC, _F,
         linux=(_W, "Linux can take a CPU offline; the reference guest never does")),
    Rule("count.grows",
         "active_count is the load count plus the hot-adds completed so far: it grows by one on "
         "each hot-add Complete", Source.RE, _W),
    Rule("irql.level",
         "hot-add callbacks run at PASSIVE_LEVEL; replay callbacks at PASSIVE_LEVEL or APC_LEVEL "
         "(the replay holds a fast mutex)", Source.DOC, _F, profiles=_WINDOWS_ONLY),
    Rule("linux.fixed_fields", "irql and group are always 0 in the Linux probe's records",
         Source.FORMAT, _F, profiles=_LINUX_ONLY),
    Rule("notify.after_end",
         "no notify after deregistered, register_failed or unload", Source.DOC, _F),
    Rule("host.adds",
         "hot-add Starts == vCPU adds the host performed, less those the replay covered (added "
         "during the load, online before the register call)", Source.DOC, _F),
    Rule("host.completes",
         "hot-add Completes == adds the host expected to succeed, less those the replay covered",
         Source.DOC, _F),
    Rule("host.boot_count",
         "the load record's active_count == the guest's boot vCPUs (plus at most the adds in "
         "flight during the load)", Source.DOC, _F),
    Rule("host.final_count",
         "boot vCPUs + adds the replay covered + hot-add Completes == the processor count the "
         "guest reports", Source.DOC, _F),
)

RULES_BY_ID: Mapping[str, Rule] = {rule.id: rule for rule in RULES}


def rules_for(profile: Profile) -> tuple[Rule, ...]:
    """The rules a profile applies, in table order."""
    return tuple(rule for rule in RULES if profile in rule.profiles)


def rules_markdown() -> str:
    """The rule table as Markdown (docs/oracle-rules.md embeds it; a test keeps them equal)."""
    lines = ["| id | statement | source | windows | linux |", "| --- | --- | --- | --- | --- |"]
    for rule in RULES:
        cells = []
        for profile in Profile:
            if profile not in rule.profiles:
                cells.append("-")
            elif profile is Profile.LINUX and rule.linux is not None:
                cells.append(f"{rule.linux[0].value} ({rule.linux[1]})")
            else:
                cells.append(rule.severity_in(profile).value)
        lines.append(f"| `{rule.id}` | {rule.statement} | {rule.source.value} | "
                     f"{' | '.join(cells)} |")
    return "\n".join(lines) + "\n"

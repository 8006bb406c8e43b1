"""A run's facts as JUnit XML properties (name, value), for CI dashboards and nightly triage.

The pytest plugin appends them to the test's `user_properties`; pytest's junitxml writes them
as `<property name=... value=...>` of the test case. Names are stable: `hotadd.<what>`.
"""

from __future__ import annotations

from harness.observation import AddOutcome
from harness.oracle import RULES_BY_ID
from harness.result import RunResult


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def describe_add(add: AddOutcome) -> str:
    """One add in a line: where it went and when each answer came (ms after setVcpu)."""
    cpu = f"CPU {add.guest_index}" if add.guest_index is not None else "no guest CPU"
    ost = "none" if add.ost_ms is None else f"{add.ost_ms:.1f} ms (status {add.ost_status})"
    call = add.plugged.call_seconds * 1000
    return (f"vCPU {add.plugged.libvirt_id} -> {cpu}: {add.end_state}; call {call:.1f} ms, "
            f"_OST {ost}, start ~{_ms(add.start_ms_approx)} ms, end ~{_ms(add.end_ms_approx)} ms")


def junit_properties(result: RunResult) -> list[tuple[str, str]]:
    """Outcome, verdict, each finding, failed host checks, each add's latencies, the
    developer's driver (loaded after each step, its stream's verdict), versions."""
    data = result.to_dict()
    props: list[tuple[str, str]] = [
        ("hotadd.outcome", data["outcome"]),
        ("hotadd.verdict", "none" if result.verdict is None
         else "pass" if result.verdict.passed else "fail"),
        ("hotadd.guest", f"{result.spec.guest}://{result.domain}"),
        ("hotadd.artifacts", str(result.run_dir)),
    ]
    if result.error:
        props.append(("hotadd.error", result.error))
    if result.verdict is not None:
        props.append(("hotadd.findings", str(len(result.verdict.findings))))
        for i, f in enumerate(result.verdict.findings, start=1):
            seqs = ",".join(str(s) for s in f.seqs) or "-"
            props.append((f"hotadd.finding.{i}",
                          f"{f.severity.value} {f.rule_id} [{RULES_BY_ID[f.rule_id].source.value}]"
                          f" seq {seqs}: {f.message}"))
    for c in result.host_checks:
        if not c.passed:
            props.append((f"hotadd.host_check.{c.check_id}", f"{c.severity.value}: {c.message}"))
    for add in result.adds:
        key = f"hotadd.add.{add.index}"
        props += [(key, describe_add(add)), (f"{key}.end_state", add.end_state),
                  (f"{key}.ost_ms", _ms(add.ost_ms)),
                  (f"{key}.start_ms", _ms(add.start_ms_approx)),
                  (f"{key}.end_ms", _ms(add.end_ms_approx)),
                  (f"{key}.start_to_end_ms", _ms(add.start_to_end_ms))]
    if result.after_unload is not None:
        props.append(("hotadd.add_after_unload", describe_add(result.after_unload)))
    if result.driver is not None:
        d = result.driver
        props.append(("hotadd.driver", f"{d.driver.name}: {'pass' if d.passed else 'fail'}"))
        props += [(f"hotadd.driver.after.{c.after.replace(' ', '_')}",
                   "loaded" if c.running else "vanished") for c in d.checks]
        props += [(f"hotadd.driver.stream.{s.writer}", "no records" if s.verdict is None
                   else "pass" if s.verdict.passed else "fail") for s in d.streams]
        if d.faulting_module:
            props.append(("hotadd.driver.faulting_module", d.faulting_module))
    props += [(f"hotadd.version.{k}", str(v)) for k, v in sorted(result.versions.items())]
    props += [(f"hotadd.time.{k.replace(' ', '_')}", f"{v:.3f}")
              for k, v in result.timings.items()]
    return props



"""The health watch on the reference guest with real faults: the probe module injects a soft
lockup, a hung task, an oops or a panic into the first hot-add's "start", and the run must end
with the console's report, not a transport timeout. A wedged guest is a harness error (exit 2),
a crash after the probe loaded a verdict failure (exit 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import ExitCode
from harness.guests import reference
from harness.guests.reference_kind import ReferenceKind
from harness.host.domain import Accelerator, Topology
from harness.progress import Progress
from harness.scenario import run_scenario
from harness.spec import ScenarioSpec

pytestmark = pytest.mark.vm

CASES = [
    # fault, exit code, what the error says, a line the console excerpt must hold
    (reference.ProbeFault.LOCKUP, ExitCode.HARNESS_ERROR, "is wedged: soft lockup",
     "BUG: soft lockup"),
    (reference.ProbeFault.HANG, ExitCode.HARNESS_ERROR, "is wedged: hung task",
     "blocked for more than"),
    (reference.ProbeFault.OOPS, ExitCode.VERDICT_FAIL, "crashed: oops",
     "BUG: kernel NULL pointer dereference"),
    (reference.ProbeFault.PANIC, ExitCode.VERDICT_FAIL, "crashed: guest panic",
     "Kernel panic - not syncing: hotadd-probe: injected panic"),
]


@pytest.mark.parametrize(("fault", "code", "error", "console"), CASES,
                         ids=[c[0].value for c in CASES])
def test_a_sick_guest_ends_the_run_with_the_console_report(
        tmp_path: Path, fault: reference.ProbeFault, code: ExitCode, error: str,
        console: str) -> None:
    spec = ScenarioSpec(topology=Topology(cores=4), boot_vcpus=2, adds=2,
                        accelerator=Accelerator.TCG, run_dir=tmp_path / "run")
    kind = ReferenceKind(fault=reference.FaultInjection(fault, cpu=2))  # the first add's CPU
    result = run_scenario(spec, Progress(quiet=True), kind=kind)

    assert result.exit_code is code, result.error
    assert result.error is not None and error in result.error
    assert result.failed_stage is not None and result.failed_stage.startswith("add 1"), (
        "the add the fault hit is named")
    assert result.console_excerpt is not None and console in result.console_excerpt
    assert console in result.error, "the excerpt is in the error message too"
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["exit_code"] == int(code) and console in saved["console_excerpt"]
    assert saved["failed_stage"] == result.failed_stage
    assert len(result.adds) == 0, "the faulted add never completed"

"""The doctor's hot-plug check asks QEMU itself over QMP on its stdin (the same code runs on a
remote host through SSH: tests/vm/test_remote_lab.py)."""

from __future__ import annotations

from pathlib import Path

from harness.doctor import _hotpluggable_cpu_types
from harness.host.domain import default_emulator


def test_qemu_names_the_cpu_types_q35_can_hot_plug() -> None:
    check = _hotpluggable_cpu_types(default_emulator())
    assert check.ok, check
    assert check.detail.startswith("q35 slots of type ") and "x86_64-cpu" in check.detail


def test_an_emulator_that_does_not_run_is_named_with_the_install(tmp_path: Path) -> None:
    check = _hotpluggable_cpu_types(str(tmp_path / "qemu-system-x86_64"))
    assert not check.ok and "did not answer QMP" in check.detail
    assert check.fix == "apt-get install qemu-system-x86"


"""The plugin as users meet it: pytester sessions that load it through its `pytest11` entry
point when this venv has it (else with -p), for tests in tests/unit and tests/vm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

import harness.guests.reference_kind
import harness.pytest_plugin
import harness.scenario
import harness.transport.ssh
from harness import paths

# pytester's in-process runs drop the modules a run imported when it ends, so the next run
# imports them again: paramiko key objects from two imports of its classes then compare
# unequal and the guest's (correct) host key is refused. Importing the stack here puts it in
# the baseline every run keeps.
_ = (harness.guests.reference_kind, harness.pytest_plugin, harness.scenario,
     harness.transport.ssh)


@dataclass(frozen=True)
class Suite:
    """A pytester whose sessions load the plugin."""

    pytester: pytest.Pytester
    plugin: tuple[str, ...]

    def run(self, *args: str) -> pytest.RunResult:
        return self.pytester.runpytest(*self.plugin, *args)

    def inline_run(self, *args: str) -> Any:
        return self.pytester.inline_run(*self.plugin, *args)


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
          pytestconfig: pytest.Config) -> Suite:
    names = {name for name, _ in pytestconfig.pluginmanager.list_name_plugin()}
    # pytester moves HOME; the guest build cache must stay where it is.
    monkeypatch.setenv("HOTADD_CACHE_DIR", str(paths.cache_dir()))
    return Suite(pytester, () if "hotadd" in names else ("-p", "harness.pytest_plugin"))

"""The pytest side of a matrix (`pytest --hotadd-matrix FILE -n N`, which `hotadd matrix` runs).

Registered by `harness.pytest_plugin` when `--hotadd-matrix` is given. The matrix file is
collected as a test file whose tests are its cases (`group/scenario@host/guest[values]`);
pytest-xdist distributes them over workers. Per process (a worker, or pytest itself without
xdist): one embedded libvirt root claimed from the worker slots (`harness.host.roots`). Per
case: a lease on the host's capacity (`harness.host.capacity`), then `run_scenario` as `hotadd
run` does, the case's run report, and its facts as JUnit properties (host, worker, guest,
verdict, per-add latencies). The controller alone (the process without `workerinput`) writes
the matrix page from the reports it receives and turns the cases' outcomes into hotadd's exit
code; `harness.pytest_plugin` has it sweep dead workers' roots before workers start.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.errors import HotaddError, Outcome, exit_code
from harness.host.capacity import Holder, lease
from harness.matrix import Matrix, MatrixCase, MatrixHost, load_matrix
from harness.progress import Progress
from harness.pytest_plugin import process_root
from harness.report.html import write_report
from harness.report.junit import junit_properties
from harness.report.matrix import CaseCell, write_matrix_page
from harness.report.text import render_result
from harness.scenario import run_scenario

ARTIFACTS_KEY = "hotadd_matrix_artifacts"  # what the controller tells each xdist worker


class CaseFailed(Exception):
    """A case did not pass; its text is what `hotadd run` prints for it."""


class MatrixItem(pytest.Item):
    """One case of the matrix."""

    def __init__(self, *, case: MatrixCase, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case

    def runtest(self) -> None:
        plugin = self.config.pluginmanager.get_plugin(PLUGIN_NAME)
        assert isinstance(plugin, MatrixSession)
        plugin.run_case(self)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> str:
        if isinstance(excinfo.value, CaseFailed):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo, style=style))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, self.case.case_id


class MatrixFile(pytest.File):
    """The matrix file, collected: its cases, in the file's order."""

    matrix: Matrix

    def collect(self) -> Iterator[MatrixItem]:
        for case in self.matrix.cases:
            yield MatrixItem.from_parent(self, name=case.case_id, case=case)


def worker_id(config: pytest.Config) -> str:
    """The xdist worker's id (gw0, gw1, ...), or "main" in a run without workers."""
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    return str(workerinput["workerid"]) if workerinput else "main"


PLUGIN_NAME = "hotadd-matrix"


def night_outcome(outcomes: Iterable[str]) -> Outcome | None:
    """The matrix's outcome from its cases': fail if any verdict failed (the driver
    misbehaved somewhere: that is news even when other cases broke), else error if any case
    had no verdict, else pass; None when no case reported."""
    seen = {o for o in outcomes if o != "skipped"}
    if not seen:
        return None
    if Outcome.FAIL.value in seen:
        return Outcome.FAIL
    return Outcome.PASS if seen == {Outcome.PASS.value} else Outcome.ERROR


class MatrixSession:
    """The matrix run as seen by one pytest process (controller, worker, or both)."""

    def __init__(self, config: pytest.Config, matrix: Matrix) -> None:
        self.config = config
        self.matrix = matrix
        self.worker = worker_id(config)
        self.controller = not hasattr(config, "workerinput")
        workerinput: dict[str, Any] = getattr(config, "workerinput", {})
        given: Path | None = config.getoption("hotadd_artifacts")
        self.artifacts = (Path(workerinput[ARTIFACTS_KEY]) if ARTIFACTS_KEY in workerinput
                          else given.resolve() if given is not None
                          else Path.cwd() / "runs" / (
                              f"{time.strftime('%Y%m%d-%H%M%S')}-matrix-{matrix.name}"))
        self.cells: dict[str, CaseCell] = {}
        self.page: Path | None = None

    @classmethod
    def register(cls, config: pytest.Config, path: Path) -> None:
        """Load and check the whole matrix, make it the session's tests, register."""
        matrix = load_matrix(path, config.getoption("hotadd_host") or ())
        if config.args_source is not pytest.Config.ArgsSource.ARGS:
            config.args = [str(path)]  # the matrix instead of the project's testpaths
        elif not any(Path(a.split("::")[0]).resolve() == path.resolve() for a in config.args):
            config.args.append(str(path))
        config.pluginmanager.register(cls(config, matrix), PLUGIN_NAME)

    # --- every process ------------------------------------------------------------------------

    def pytest_collect_file(self, file_path: Path, parent: pytest.Collector) -> MatrixFile | None:
        if file_path.resolve() != self.matrix.path.resolve():
            return None
        collected: MatrixFile = MatrixFile.from_parent(parent, path=file_path)
        collected.matrix = self.matrix
        return collected

    def uri_for(self, host: MatrixHost) -> str:
        """This process's libvirt URI on `host`: its own embedded root, or the host's daemon."""
        if not host.embedded:
            return host.uri
        return process_root(self.config).uri

    def run_case(self, item: MatrixItem) -> None:
        case = item.case
        run_dir = self.artifacts / case.dir_name
        props = item.user_properties
        props += [("hotadd.matrix.case", case.case_id), ("hotadd.host", case.host.name),
                  ("hotadd.worker", self.worker), ("hotadd.matrix.guest", case.guest)]
        progress = Progress(quiet=self.config.getoption("verbose") < 1)

        def waiting(holders: list[Holder]) -> None:
            progress.say(f"capacity of {case.host.name}: waiting for "
                         f"{', '.join(h.label for h in holders)}")

        try:
            uri = self.uri_for(case.host)
            props.append(("hotadd.host.uri", uri))
            with lease(case.host.gate_key, case.host.capacity, case.need, case.case_id,
                       waiting):
                result = run_scenario(dataclasses.replace(case.spec, libvirt_uri=uri,
                                                          run_dir=run_dir), progress)
        except HotaddError as exc:  # found before the run started (a missing image, a root)
            props += [("hotadd.outcome", Outcome.ERROR.value), ("hotadd.verdict", "none"),
                      ("hotadd.error", str(exc))]
            raise CaseFailed(f"hotadd: error: {exc}") from exc
        try:
            write_report(run_dir)
        except HotaddError as exc:  # the verdict stands; only the page is missing
            props.append(("hotadd.report_error", str(exc)))
        props += junit_properties(result)
        if not result.passed:
            raise CaseFailed(render_result(result))

    # --- the controller -------------------------------------------------------------------------

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """pytest-xdist: every worker writes under the controller's artifacts directory."""
        node.workerinput[ARTIFACTS_KEY] = str(self.artifacts)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not self.controller:
            return
        case_id = report.nodeid.rsplit("::", 1)[-1]
        case = next((c for c in self.matrix.cases if c.case_id == case_id), None)
        if case is None or (report.when != "call" and report.passed):
            return
        if case_id in self.cells and report.when != "call":
            return  # a teardown problem after the case's own result
        self.cells[case_id] = CaseCell.from_properties(
            case_id, case.row, case.column, [(str(k), str(v)) for k, v in report.user_properties],
            pytest_outcome=report.outcome, seconds=report.duration,
            longrepr=None if report.passed else str(report.longrepr)[-2000:])

    def outcome(self) -> Outcome | None:
        return night_outcome(c.outcome for c in self.cells.values())

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.controller:
            return
        self.page = write_matrix_page(
            self.artifacts, self.matrix.name, self.matrix.description,
            [(c.row, c.column) for c in self.matrix.cases], self.cells.values())
        outcome = self.outcome()
        if outcome is not None and session.exitstatus in (0, 1):
            session.exitstatus = int(exit_code(outcome))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.page is not None:
            outcome = self.outcome()
            terminalreporter.write_line(
                f"hotadd: matrix {outcome.value if outcome else 'no result'}; page {self.page}")

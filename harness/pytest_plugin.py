"""pytest plugin: hot-add scenarios as ordinary tests, on the reference guest or on Windows.

Registered through the `pytest11` entry point (`hotadd = "harness.pytest_plugin"`); without
it, `pytest -p harness.pytest_plugin`. Options (one group, `--hotadd-` prefix) pick the guest,
libvirt URI, accelerator and artifacts directory. Fixtures:

- `hotadd_guest`: a booted guest in a known state: the session boots it once, saves it
  (virDomainSave) before any test touched it, and restores that state for every test, since
  hot-added vCPUs stay (measured on the reference guest under TCG: boot to SSH 7 s, save 1.7 s
  once, restore to SSH 0.6-2 s per test). The guest is released as soon as the next test does
  not need it, so a session never holds a guest it no longer uses.
- `hotadd`: the scenario helper: `hotadd.run(adds=2, veto_index=3)` performs the adds and
  returns the `RunResult` (oracle verdict + host checks); `hotadd.probe()` loads the probe for
  step-by-step tests.
- `hotadd_probe`: the probe loaded with default settings (`hotadd.probe()`).
- `hotadd_driver`: your driver beside the probe: `hotadd_driver("my.ko", {"size": 4}).run(
  adds=2)`; `result.driver` says after each add whether it was still loaded, and judges its
  records stream if it writes one.

Markers: `hotadd_windows`, `hotadd_kvm`, `hotadd_vcpus(total, free=k)`; a test whose need is
not met is skipped with a reason naming what is missing and the option that provides it.

`--hotadd-matrix FILE` runs a scenario matrix instead of test files (`hotadd matrix`; see
`harness.matrix_plugin`), on pytest-xdist workers with `-n N`.

Each test's artifacts (serial.log, domain.xml, records.jsonl, result.json, screenshot.png on
failure) land in `<artifacts>/<test>/`; the run's HTML report in `<artifacts>/report.html`;
JUnit XML (`--junitxml`) gets the verdict, findings, add latencies and versions as properties.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness import paths
from harness.attempt import Attempt
from harness.developer import check_package
from harness.errors import HotaddError, InfrastructureError, InputError
from harness.guests import registry
from harness.guests.base import (
    STATUS_INSUFFICIENT_RESOURCES,
    DriverOrder,
    DriverPackage,
    ProbeSettings,
)
from harness.host import accel
from harness.host.domain import Accelerator, Topology
from harness.host.machine import HotplugMethod, run_name
from harness.host.roots import WorkerRoot, claim_worker_root, sweep_dead_worker_roots
from harness.host.target import is_remote_uri
from harness.observation import AddOutcome
from harness.pool import Guest, Host, open_host
from harness.progress import Progress
from harness.records import NotifyRecord, Record, read_records
from harness.report.html import write_report
from harness.report.junit import junit_properties
from harness.report.text import render_result
from harness.result import RunResult, write_result
from harness.result_file import TEST_FILE  # the test's id and pytest outcome, beside its run
from harness.spec import ScenarioSpec, guest_kind

GUEST_FIXTURES = ("hotadd_guest", "hotadd", "hotadd_probe")

_LAB = pytest.StashKey["Lab"]()
_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
_NEXT_WANTS_GUEST = pytest.StashKey[bool]()
_BENCH = pytest.StashKey["_TestBench"]()
_WORKER_ROOT = pytest.StashKey[WorkerRoot]()
#: what the xdist controller tells each worker: the one artifacts directory of the session
ARTIFACTS_KEY = "hotadd_artifacts"
TEST_DIR_PROPERTY = "hotadd.test_dir"


# --- options and markers ----------------------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hotadd", "hotadd: vCPU hot-add scenarios on a real guest")
    group.addoption("--hotadd-libvirt-uri", metavar="URI",
                    help="libvirt URI (default: HOTADD_LIBVIRT_URI, else "
                         f"{paths.default_libvirt_uri()})")
    group.addoption("--hotadd-guest", choices=registry.names(), default=registry.DEFAULT,
                    help=f"guest kind (default: {registry.DEFAULT})")
    group.addoption("--hotadd-image", type=Path, metavar="PATH",
                    help="Windows golden image (hotadd image build)")
    group.addoption("--hotadd-driver", type=Path, metavar="PATH",
                    help="Windows probe driver .sys (default: the one in the image)")
    group.addoption("--hotadd-accel", choices=[a.value for a in Accelerator],
                    default=Accelerator.AUTO.value,
                    help="accelerator (default: auto = KVM only where it really works)")
    group.addoption("--hotadd-boot-vcpus", type=int, default=2, metavar="N",
                    help="vCPUs online at boot (default 2)")
    group.addoption("--hotadd-max-vcpus", type=int, default=4, metavar="N",
                    help="max vCPUs, i.e. boot + hot-pluggable slots (default 4)")
    group.addoption("--hotadd-ready-timeout", type=float, default=120.0, metavar="SECONDS",
                    help="how long the first boot may take to reach the guest's transport")
    group.addoption("--hotadd-keep-on-failure", action="store_true",
                    help="leave a failing test's guest running for inspection (later tests "
                         "boot a new one)")
    group.addoption("--hotadd-artifacts", type=Path, metavar="DIR",
                    help="per-test artifacts and report.html (default: <basetemp>/hotadd; "
                         "with --hotadd-matrix: ./runs/TIME-matrix-NAME)")
    group.addoption("--hotadd-matrix", type=Path, metavar="FILE",
                    help="run the scenario matrix of this TOML file (hotadd matrix; with -n N "
                         "on N pytest-xdist workers)")
    group.addoption("--hotadd-host", action="append", metavar="NAME|URI",
                    help="with --hotadd-matrix: run on this host of the file only (repeatable)")


MARKERS = (
    "hotadd: the test uses a hotadd guest (set by the plugin on tests using its fixtures)",
    "hotadd_windows: the test needs the Windows guest (--hotadd-guest windows)",
    "hotadd_kvm: the test needs KVM (hardware virtualisation), not TCG",
    "hotadd_vcpus(total=None, free=None): the test needs a guest with at least `total` vCPUs "
    "and at least `free` hot-pluggable slots (--hotadd-max-vcpus, --hotadd-boot-vcpus)",
)


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    try:
        spec = base_spec(config)
        matrix: Path | None = config.getoption("hotadd_matrix")
        if matrix is not None:
            from harness.matrix_plugin import MatrixSession

            MatrixSession.register(config, matrix)
    except HotaddError as exc:
        raise pytest.UsageError(f"hotadd options: {exc}") from exc
    lab = config.stash[_LAB] = Lab(config, _worker_libvirt(config, spec))
    config.pluginmanager.register(lab, "hotadd-lab")


def _worker_libvirt(config: pytest.Config, spec: ScenarioSpec) -> ScenarioSpec:
    """Under pytest-xdist, a worker that would use the per-user default embedded root takes a
    worker root of its own instead: libvirt lets one process hold a root. An explicitly given
    URI is used as given."""
    if not hasattr(config, "workerinput") or config.getoption("hotadd_matrix"):
        return spec  # (a matrix's cases take the process's root when they run)
    if (spec.libvirt_uri or os.environ.get("HOTADD_LIBVIRT_URI") or
            paths.default_libvirt_uri()) != paths.default_libvirt_uri():
        return spec
    return dataclasses.replace(spec, libvirt_uri=process_root(config).uri)


def process_root(config: pytest.Config) -> WorkerRoot:
    """This process's worker root, claimed on first use and held until pytest ends."""
    if _WORKER_ROOT not in config.stash:
        config.stash[_WORKER_ROOT] = claim_worker_root()
    return config.stash[_WORKER_ROOT]


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist starts its workers
def pytest_sessionstart(session: pytest.Session) -> None:
    """A session with workers (or a matrix) first sweeps the worker roots of dead workers:
    their QEMU outlives them, and this process is the next run that can clear it."""
    config = session.config
    if hasattr(config, "workerinput") or not (
            config.getoption("hotadd_matrix") or getattr(config.option, "numprocesses", None)):
        return
    try:
        config.stash[_LAB].swept = sweep_dead_worker_roots()
    except HotaddError as exc:
        raise pytest.UsageError(f"hotadd: {exc}") from exc


def pytest_unconfigure(config: pytest.Config) -> None:
    root = config.stash.get(_WORKER_ROOT, None)
    if root is not None:
        root.release()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist, on the controller: every worker puts its tests' artifacts in the
    controller's directory, where the controller alone writes the session's report."""
    lab: Lab = node.config.stash[_LAB]
    lab.default_artifacts(node.config._tmp_path_factory.getbasetemp() / "hotadd")
    node.workerinput[ARTIFACTS_KEY] = str(lab.artifacts)


def base_spec(config: pytest.Config) -> ScenarioSpec:
    """The session's scenario spec from the options: everything but what a test chooses."""
    max_vcpus: int = config.getoption("hotadd_max_vcpus")
    boot: int = config.getoption("hotadd_boot_vcpus")
    if max_vcpus < 1:
        raise InputError(f"--hotadd-max-vcpus {max_vcpus} must be >= 1", "give a positive count")
    uri = config.getoption("hotadd_libvirt_uri")
    if is_remote_uri(uri):
        raise InputError(f"--hotadd-libvirt-uri {uri} is a remote host: the session's guest is "
                         "saved once and restored for every test (virDomainSave), which "
                         "remote hosts do not support yet",
                         "run the plugin on the host itself; 'hotadd run' and 'hotadd matrix' "
                         "run on remote hosts")
    kind = registry.get(config.getoption("hotadd_guest"))
    return ScenarioSpec(
        guest=kind.name,
        topology=Topology(sockets=1, dies=1, cores=max_vcpus, threads=1), boot_vcpus=boot,
        adds=0, accelerator=Accelerator(config.getoption("hotadd_accel")),
        libvirt_uri=uri,
        keep_on_failure=config.getoption("hotadd_keep_on_failure"),
        ready_timeout=config.getoption("hotadd_ready_timeout"),
        guest_settings=registry.settings_from_options(kind, {
            "image": config.getoption("hotadd_image"),
            "driver": config.getoption("hotadd_driver")}))


def missing_for(item: pytest.Item, spec: ScenarioSpec) -> str | None:
    """Why this session cannot run `item` (the reason of its skip), or None."""
    if item.get_closest_marker("hotadd_windows") and spec.guest != "windows":
        return (f"needs the Windows guest; this session runs the {spec.guest} guest: "
                "run with --hotadd-guest windows --hotadd-image IMAGE (see 'hotadd image build')")
    if item.get_closest_marker("hotadd_kvm"):
        if spec.accelerator is Accelerator.TCG:
            return "needs KVM; this session forces TCG (--hotadd-accel tcg)"
        status = accel.kvm_status()
        if status.accelerator is not Accelerator.KVM:
            return f"needs KVM, which this host cannot give: {status.reason}"
    marker = item.get_closest_marker("hotadd_vcpus")
    if marker is not None:
        total = marker.kwargs.get("total", marker.args[0] if marker.args else None)
        free = marker.kwargs.get("free")
        plan = spec.vcpu_plan
        if total is not None and plan.maximum < total:
            return (f"needs a guest with {total} vCPUs; this session's has {plan.maximum} "
                    f"(run with --hotadd-max-vcpus {total})")
        if free is not None and plan.hotpluggable < free:
            return (f"needs {free} vCPU slots free for hot-add; this session's guest boots "
                    f"{plan.boot} of {plan.maximum} ({plan.hotpluggable} free): run with "
                    f"--hotadd-max-vcpus {plan.boot + free} or a lower --hotadd-boot-vcpus")
    return None


@pytest.hookimpl(tryfirst=True)  # before -m selects by the marker added here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests that use a guest `hotadd` (`-m "not hotadd"` leaves them out), and skip
    (before any fixture, so before any guest boots) what this session cannot run."""
    spec = config.stash[_LAB].spec
    for item in items:
        if any(f in getattr(item, "fixturenames", ()) for f in GUEST_FIXTURES):
            item.add_marker(pytest.mark.hotadd)
        reason = missing_for(item, spec)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, Any, None]:
    """Keep each phase's report on the item, so fixtures can tell whether the test failed."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    item.stash.setdefault(_REPORTS, {})[report.when] = report


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None
                            ) -> Generator[None, None, None]:
    """Tell the test's fixtures whether the next test wants the guest (else it is released)."""
    item.stash[_NEXT_WANTS_GUEST] = nextitem is not None and any(
        f in getattr(nextitem, "fixturenames", ()) for f in GUEST_FIXTURES)
    yield


def pytest_sessionfinish(session: pytest.Session) -> None:
    lab = session.config.stash.get(_LAB, None)
    if lab is not None:
        lab.finish()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    lab = config.stash.get(_LAB, None)
    if lab is None:
        return
    for line in lab.summary_lines():
        terminalreporter.write_line(line)


# --- the session's guest ----------------------------------------------------------------------

class Lab:
    """The session's libvirt connection and guest, booted on first use and saved once."""

    def __init__(self, config: pytest.Config, spec: ScenarioSpec) -> None:
        self.config = config
        self.spec = spec
        self.progress = Progress(quiet=config.getoption("verbose") < 1)
        self.report: Path | None = None
        self.report_error: str | None = None
        self._test_dirs: list[Path] = []  # this session's, in the order the tests ran
        self.kept: list[str] = []
        self.swept: list[str] = []  # dead workers' roots cleared at the start
        workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
        self.worker = workerinput is not None  # an xdist worker: the controller reports
        self._artifacts: Path | None = (
            Path(workerinput[ARTIFACTS_KEY]) if workerinput and ARTIFACTS_KEY in workerinput
            else config.getoption("hotadd_artifacts"))
        self._stack = contextlib.ExitStack()  # the host connection
        self._guest_stack = contextlib.ExitStack()  # the current guest
        self._host: Host | None = None
        self._guest: Guest | None = None
        self._boot_failure: HotaddError | None = None  # later tests fail fast with it

    @property
    def artifacts(self) -> Path:
        if self._artifacts is None:
            raise InputError("no hotadd artifacts directory yet", "use the hotadd_lab fixture")
        self._artifacts.mkdir(parents=True, exist_ok=True)
        return self._artifacts

    def default_artifacts(self, path: Path) -> None:
        """Where artifacts go when --hotadd-artifacts was not given."""
        if self._artifacts is None:
            self._artifacts = path

    def test_dir(self, nodeid: str) -> Path:
        """A fresh directory for one test's artifacts, named after its node id."""
        name = re.sub(r"[^A-Za-z0-9_.=-]+", "-", nodeid.split("/")[-1]).strip("-")
        path = self.artifacts / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        self._test_dirs.append(path)
        return path

    def guest(self) -> Guest:
        """The saved guest, booting (and saving) it first if there is none."""
        if self._boot_failure is not None:
            raise InfrastructureError(
                f"the session's guest failed to start earlier: {self._boot_failure.problem}",
                self._boot_failure.fix)
        if self._guest is None:
            try:
                self._guest = self._boot()
            except HotaddError as exc:
                self._boot_failure = exc
                raise
        return self._guest

    def _boot(self) -> Guest:
        spec, progress = self.spec, self.progress
        kind = guest_kind(spec)
        with progress.stage("prepare", f"{kind.name} guest image"):
            kind.prepare(progress)
        if self._host is None:
            self._host = self._stack.enter_context(open_host(spec, progress))
        name = run_name(spec.guest)
        boot_dir = self.artifacts / f"_boot-{name}"
        boot_dir.mkdir(parents=True, exist_ok=True)
        guest = self._guest_stack.enter_context(
            Guest.boot(spec, kind, self._host, progress, name, boot_dir))
        try:
            guest.connect(progress)
            guest.save(guest.machine.scratch / "checkpoint.save", progress)
        except BaseException:
            self.release()
            raise
        return guest

    def keep(self, guest: Guest) -> None:
        """Leave `guest` running for a person; the next test boots a new one."""
        guest.keep(self.progress)
        self.kept.append(f"{guest.name} (serial log {guest.machine.spec.serial_log})")
        self.release()

    def release(self) -> None:
        self._guest = None
        self._guest_stack.close()

    def close(self) -> None:
        """Release the guest and the libvirt connection (idempotent)."""
        try:
            self.release()
        finally:
            self._host = None
            self._stack.close()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """On the xdist controller: the test directories the workers made, for the report."""
        for name, value in report.user_properties:
            if name == TEST_DIR_PROPERTY and Path(str(value)) not in self._test_dirs:
                self._test_dirs.append(Path(str(value)))

    def finish(self) -> None:
        self.close()
        if self.worker:
            return  # the controller writes the one report, from every worker's tests
        if self._test_dirs and self._artifacts is not None:
            try:
                self.report = write_report(self._artifacts, self._test_dirs)
            except HotaddError as exc:  # the tests' outcomes stand; only the page is missing
                self.report_error = str(exc)

    def summary_lines(self) -> list[str]:
        lines = [f"hotadd: swept a dead worker's root: {s}" for s in self.swept]
        if self.report is not None:
            lines.append(f"hotadd: report {self.report}")
        if self.report_error is not None:
            lines.append(f"hotadd: report not written: {self.report_error}")
        lines += [f"hotadd: kept for inspection: {k}; 'hotadd sweep' removes it"
                  for k in self.kept]
        return lines


# --- fixtures ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class _TestBench:
    """What `hotadd_guest` sets up for one test besides the guest: its artifacts directory and
    its progress reporter (kept in the test item's stash for the `hotadd` fixture)."""

    artifacts: Path
    progress: Progress


@pytest.fixture(scope="session")
def hotadd_lab(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The session's lab; torn down with the session's fixtures, so no guest outlives them."""
    lab: Lab = request.config.stash[_LAB]
    lab.default_artifacts(tmp_path_factory.getbasetemp() / "hotadd")
    yield lab
    lab.close()


@pytest.fixture
def hotadd_guest(hotadd_lab: Lab, request: pytest.FixtureRequest) -> Iterator[Guest]:
    """A booted guest in its saved state: probe not loaded, boot vCPUs only, session open."""
    lab = hotadd_lab
    guest = lab.guest()
    test_dir = lab.test_dir(request.node.nodeid)
    request.node.user_properties.append((TEST_DIR_PROPERTY, str(test_dir)))
    progress = Progress(quiet=lab.progress.quiet)
    try:
        guest.restore(test_dir, progress)
        guest.connect(progress)
    except BaseException:
        _write_test_file(test_dir, request.node.nodeid, {}, "error")
        raise
    request.node.stash[_BENCH] = _TestBench(test_dir, progress)
    yield guest
    reports = request.node.stash.get(_REPORTS, {})
    failed = any(r.failed for r in reports.values())
    if failed and guest.running:
        with contextlib.suppress(HotaddError):
            guest.machine.screenshot(test_dir / "screenshot.png")
    _write_test_file(test_dir, request.node.nodeid, reports)
    if failed and lab.spec.keep_on_failure and guest.running:
        lab.keep(guest)
    else:
        guest.stop()
    if not request.node.stash.get(_NEXT_WANTS_GUEST, False):
        lab.release()


class LoadedProbe:
    """The probe loaded in the guest: add vCPUs one at a time, unload, then `finish()`."""

    def __init__(self, helper: HotaddHelper, attempt: Attempt) -> None:
        self._helper = helper
        self.attempt = attempt

    def add(self, vcpu_id: int | None = None) -> AddOutcome:
        return self.attempt.add(vcpu_id)

    def unload(self) -> None:
        self.attempt.unload()

    def add_after_unload(self) -> AddOutcome:
        return self.attempt.add_after_unload()

    def finish(self) -> RunResult:
        """Collect the records and judge them: the oracle's verdict and the host checks."""
        try:
            result = self.attempt.finish()
        except HotaddError as exc:
            self._helper.record(self.attempt.failed(exc))
            raise
        return self._helper.record(result)


class HotaddHelper:
    """The `hotadd` fixture: one scenario per test on the restored guest."""

    def __init__(self, guest: Guest, spec: ScenarioSpec, request: pytest.FixtureRequest) -> None:
        self.guest = guest
        self.spec = spec
        self.bench = request.node.stash[_BENCH]
        self.request = request
        self.result: RunResult | None = None
        self._attempt: Attempt | None = None

    @property
    def boot_vcpus(self) -> int:
        return self.spec.vcpu_plan.boot

    @property
    def max_vcpus(self) -> int:
        return self.spec.vcpu_plan.maximum

    @property
    def free_vcpus(self) -> int:
        """Hot-pluggable slots: how many adds this test can make."""
        return self.spec.vcpu_plan.hotpluggable

    def probe(self, *, veto_index: int | None = None,
              veto_status: int = STATUS_INSUFFICIENT_RESOURCES, add_existing: bool = True,
              method: HotplugMethod = HotplugMethod.SET_VCPU) -> LoadedProbe:
        """Load the probe (it registers and replays before this returns)."""
        attempt = self._start(adds=0, vcpu_ids=(), add_after_unload=False, method=method,
                              probe=ProbeSettings(add_existing, veto_index, veto_status))
        attempt.load()
        return LoadedProbe(self, attempt)

    def run(self, adds: int = 1, *, vcpu_ids: tuple[int, ...] = (),
            veto_index: int | None = None, veto_status: int = STATUS_INSUFFICIENT_RESOURCES,
            add_existing: bool = True, add_after_unload: bool = False,
            method: HotplugMethod = HotplugMethod.SET_VCPU,
            load_during_adds: bool = False) -> RunResult:
        """Load the probe, hot-add `adds` vCPUs one at a time, unload, judge (with
        `load_during_adds`: plug them all, then load while they are in flight). A harness error
        on the way is in the result (`error`, exit code 2), like `hotadd run`."""
        attempt = self._start(adds=adds, vcpu_ids=vcpu_ids, add_after_unload=add_after_unload,
                              method=method, load_during_adds=load_during_adds,
                              probe=ProbeSettings(add_existing, veto_index, veto_status))
        try:
            result = attempt.run()
        except HotaddError as exc:
            result = attempt.failed(exc)
        return self.record(result)

    def with_driver(self, path: str | Path, params: Mapping[str, object] | None = None,
                    order: DriverOrder | str = DriverOrder.AFTER) -> HotaddHelper:
        """Load your driver beside the probe in this test's scenario (`run()` or `probe()`):
        a .ko on the reference guest, a .sys on Windows. It is checked after its load and
        every add; its records, if it writes them, are judged (`result.driver`)."""
        if self._attempt is not None:
            raise InputError("the scenario already started: name your driver first",
                             "call hotadd_driver(...) before run() or probe()")
        package = DriverPackage(Path(path), tuple((k, str(v)) for k, v in (params or {}).items()),
                                DriverOrder(order))
        check_package(self.spec.kind_class, package)
        self.spec = dataclasses.replace(self.spec,
                                        own_driver=self.guest.kind.check_driver(package))
        return self

    @staticmethod
    def records(result: RunResult) -> list[Record]:
        """The probe's records of the run (its records.jsonl)."""
        return read_records(result.run_dir / "records.jsonl")

    @classmethod
    def notifies(cls, result: RunResult) -> list[NotifyRecord]:
        """The probe's callback records of the run, in order."""
        return [r for r in cls.records(result) if isinstance(r, NotifyRecord)]

    @staticmethod
    def explain(result: RunResult) -> str:
        """The run as `hotadd run` prints it: adds, verdict, findings, host checks."""
        return render_result(result)

    def _start(self, **choices: Any) -> Attempt:
        if self._attempt is not None:
            raise InputError("one scenario per test: the guest already ran one",
                             "split the test; each test gets the guest restored afresh")
        spec = dataclasses.replace(self.spec, **choices, run_dir=self.bench.artifacts)
        self._attempt = Attempt(self.guest, spec, self.bench.artifacts, self.bench.progress)
        return self._attempt

    def record(self, result: RunResult) -> RunResult:
        self.result = result
        write_result(result)
        self.request.node.user_properties.extend(junit_properties(result))
        return result

    def close(self) -> None:
        """A probe loaded but never finished: still leave records and a result."""
        attempt = self._attempt
        if attempt is None or self.result is not None or not self.guest.running:
            return
        try:
            self.record(attempt.finish())
        except HotaddError as exc:
            self.record(attempt.failed(exc))


@pytest.fixture
def hotadd(hotadd_guest: Guest, hotadd_lab: Lab,
           request: pytest.FixtureRequest) -> Iterator[HotaddHelper]:
    """Perform adds on the restored guest; returns the oracle verdict and host checks."""
    helper = HotaddHelper(hotadd_guest, hotadd_lab.spec, request)
    yield helper
    helper.close()


@pytest.fixture
def hotadd_driver(hotadd: HotaddHelper) -> Callable[..., HotaddHelper]:
    """`hotadd_driver(path, params)`: your driver beside the probe; returns the `hotadd`
    helper, whose `run()`/`probe()` then load it too (see `HotaddHelper.with_driver`)."""
    return hotadd.with_driver


@pytest.fixture
def hotadd_probe(hotadd: HotaddHelper) -> LoadedProbe:
    """The probe loaded with default settings (replay of the boot vCPUs, no veto)."""
    return hotadd.probe()


def _write_test_file(test_dir: Path, nodeid: str, reports: dict[str, pytest.TestReport],
                     outcome: str = "passed") -> None:
    for when in ("setup", "call"):
        report = reports.get(when)
        if report is not None and not report.passed:
            outcome = "error" if when == "setup" and report.failed else report.outcome
            break
    (test_dir / TEST_FILE).write_text(json.dumps(
        {"nodeid": nodeid, "outcome": outcome, "pid": os.getpid()}, indent=2) + "\n")

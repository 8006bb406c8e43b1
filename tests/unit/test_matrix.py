"""Matrix files: read, expanded and checked up front, through `hotadd run`'s own options; the
shipped examples; the CLI wrapper's pytest command line; the matrix page; worker roots."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.cli import build_parser
from harness.commands.matrix import pytest_args
from harness.commands.run import spec_from_args
from harness.errors import InputError, Outcome
from harness.host import roots
from harness.host.capacity import Capacity
from harness.matrix import MatrixCase, load_matrix
from harness.matrix_plugin import night_outcome
from harness.report.junit import AddLatency, read_properties
from harness.report.matrix import CaseCell, write_matrix_page

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
HOST = """
[hosts.local]
uri = "qemu:///embed"
vcpus = 8
memory = 4096
"""


def matrix_file(tmp_path: Path, body: str, hosts: str = HOST) -> Path:
    path = tmp_path / "m.toml"
    path.write_text(textwrap.dedent(body) + hosts)  # top-level keys before any table
    return path


def as_flags(case: MatrixCase) -> list[str]:
    """The `hotadd run` flags the case's spec must equal (from the example's own values)."""
    s = case.spec
    t = s.topology
    flags = ["run", "--guest", s.guest, "--sockets", str(t.sockets), "--dies", str(t.dies),
             "--cores", str(t.cores), "--threads", str(t.threads),
             "--boot-vcpus", str(s.boot_vcpus), "--adds", str(s.adds),
             "--method", s.method.value, "--accel", s.accelerator.value,
             "--ready-timeout", str(s.ready_timeout), "--ack-timeout", str(s.ack_timeout)]
    if s.vcpu_ids:
        flags += ["--vcpu-ids", ",".join(map(str, s.vcpu_ids))]
    if s.probe.veto_index is not None:
        flags += ["--veto-cpu", str(s.probe.veto_index), "--veto-status",
                  hex(s.probe.veto_status)]
    if not s.probe.add_existing:
        flags.append("--no-add-existing")
    if s.add_after_unload:
        flags.append("--add-after-unload")
    options = {"--memory": s.memory_mib} | {f"--{k}": v for k, v in
                                           dataclasses.asdict(s.guest_settings).items()}
    for name, value in options.items():
        if value is not None:
            flags += [name, str(value)]
    return flags


def test_smoke_example_is_four_small_reference_cases() -> None:
    m = load_matrix(EXAMPLES / "smoke.toml")
    assert [c.case_id for c in m.cases] == [
        "hotplug/add@local/reference[method=setVcpu]",
        "hotplug/add@local/reference[method=setVcpusFlags]",
        "probe/veto-hot-added@local/reference",
        "probe/no-replay@local/reference"]
    host = m.hosts[0]
    for case in m.cases:
        assert case.spec.guest == "reference"
        assert case.spec.boot_vcpus == 1 and case.spec.adds == 1
        assert case.need == Capacity(2, 512)
    # two cases fit the host at once, three do not: two workers run side by side
    assert 2 * 2 <= host.capacity.vcpus < 3 * 2 and host.capacity.memory_mib >= 2 * 512


@pytest.mark.parametrize("name", ["smoke.toml", "nightly.toml"])
def test_every_example_case_is_what_hotadd_run_builds_from_the_same_flags(name: str) -> None:
    m = load_matrix(EXAMPLES / name)
    for case in m.cases:
        args = build_parser().parse_args(as_flags(case))
        assert spec_from_args(args) == case.spec, case.case_id


def test_nightly_example_runs_windows_images_on_kvm_across_topologies_and_probe_settings(
        ) -> None:
    m = load_matrix(EXAMPLES / "nightly.toml")
    windows = [c for c in m.cases if c.spec.guest == "windows"]
    assert {c.guest for c in windows} == {"ws2019", "ws2022", "ws2025"}
    assert all(c.spec.accelerator.value == "kvm" and c.spec.guest_settings.image is not None
               for c in windows)
    assert {c.group for c in m.cases} == {"topology", "probe", "scale"}
    assert len({(c.spec.topology, c.spec.boot_vcpus) for c in m.cases}) >= 5
    assert any(c.spec.probe.veto_index is not None for c in m.cases)
    assert any(not c.spec.probe.add_existing for c in m.cases)
    ref = [c for c in m.cases if c.guest == "reference"]
    assert ref and all(c.spec.accelerator.value == "auto" for c in ref)  # guest over defaults
    scale = [c for c in m.cases if c.group == "scale"]
    assert all(c.spec.memory_mib == 8192 for c in scale)  # scenario over guest


def test_lists_expand_into_a_cross_product_in_file_order(tmp_path: Path) -> None:
    m = load_matrix(matrix_file(tmp_path, """
        [defaults]
        cores = 4
        [guests.a]
        [guests.b]
        memory = 1024
        [groups.g]
        boot-vcpus = [1, 2]
        [[groups.g.scenario]]
        name = "s"
        adds = [1, 2]
        veto-cpu = 1
        veto-status = ["0xC000009A", 3221225506]
        """))
    ids = [c.case_id for c in m.cases]
    assert len(ids) == 2 * 2 * 2 * 2 == len(set(ids))
    assert ids[0] == "g/s@local/a[boot-vcpus=1,adds=1,veto-status=0xC000009A]"
    assert ids[-1] == "g/s@local/b[boot-vcpus=2,adds=2,veto-status=3221225506]"
    assert {c.spec.probe.veto_status for c in m.cases} == {0xC000009A, 0xC0000022}
    assert {c.spec.memory_mib for c in m.cases if c.guest == "b"} == {1024}


@pytest.mark.parametrize(("body", "where", "key"), [
    ("colour = 1\n[groups.g]\n[[groups.g.scenario]]\n", "m.toml", "colour"),
    ("[defaults]\nboot_vcpus = 1\n[groups.g]\n[[groups.g.scenario]]\n", "[defaults]",
     "boot_vcpus"),
    ("[guests.w]\nadds = 1\n[groups.g]\n[[groups.g.scenario]]\n", "[guests.w]", "adds"),
    ("[groups.g]\nsocket = 2\n[[groups.g.scenario]]\n", "[groups.g]", "socket"),
    ("[groups.g]\n[[groups.g.scenario]]\nname = 'x'\nveto = 1\n", "scenario 'x'", "veto"),
])
def test_unknown_keys_are_refused_naming_the_key_and_place(
        tmp_path: Path, body: str, where: str, key: str) -> None:
    with pytest.raises(InputError) as err:
        load_matrix(matrix_file(tmp_path, body))
    assert f"unknown key '{key}'" in err.value.problem and where in err.value.problem


def test_unknown_key_suggests_the_option_it_resembles(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        load_matrix(matrix_file(tmp_path, "[groups.g]\n[[groups.g.scenario]]\nboot-vcpu = 1\n"))
    assert "did you mean 'boot-vcpus'" in str(err.value.fix)


def test_hosts_unknown_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown key 'cpus'"):
        load_matrix(matrix_file(tmp_path, "[groups.g]\n[[groups.g.scenario]]\n",
                                hosts="[hosts.h]\ncpus = 2\nmemory = 512\n"))


def test_options_the_matrix_decides_are_refused_with_what_decides_them(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        load_matrix(matrix_file(tmp_path, """
            [groups.g]
            [[groups.g.scenario]]
            libvirt-uri = "qemu:///system"
            """))
    assert "'libvirt-uri' is set by the matrix" in err.value.problem
    assert "[hosts.NAME]" in str(err.value.fix)


@pytest.mark.parametrize(("scenario", "message"), [
    ("adds = [1, 5]", "adds=5] on local/reference: 5 adds requested but only"),
    ("no-add-existing = 1", "'no-add-existing' is a flag"),
    ("method = 'hotplug'", "invalid choice: 'hotplug'"),
    ("vcpu-ids = '2,x'", "is not a comma-separated list"),
    ("max-vcpus = 6", "--max-vcpus 6 != topology"),
    ("adds = { n = 1 }", "is not a value for --adds"),
    ("adds = []", "'adds' is an empty list"),
])
def test_each_case_is_validated_like_hotadd_run_naming_the_case(
        tmp_path: Path, scenario: str, message: str) -> None:
    with pytest.raises(InputError) as err:
        load_matrix(matrix_file(tmp_path, f"[groups.g]\n[[groups.g.scenario]]\nname = 's'\n"
                                          f"{scenario}\n"))
    assert "[groups.g] scenario 's'" in err.value.problem
    assert message in err.value.problem


def test_a_case_larger_than_its_host_is_refused_up_front(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        load_matrix(matrix_file(tmp_path, """
            [groups.g]
            [[groups.g.scenario]]
            name = "big"
            cores = 16
            boot-vcpus = 8
            adds = 2
            """))
    assert "needs 10 vCPUs and 512 MiB but host local offers 8 vCPUs" in err.value.problem
    assert "[hosts.local]" in str(err.value.fix)


def test_a_remote_host_over_ssh_runs_reference_cases(tmp_path: Path) -> None:
    uri = "qemu+ssh://lab@kvm7/system"
    matrix = load_matrix(matrix_file(tmp_path, "[groups.g]\n[[groups.g.scenario]]\n",
                                     hosts=f'[hosts.kvm7]\nuri = "{uri}"\nvcpus = 8\n'
                                     'memory = 8192\n'))
    assert [c.host.uri for c in matrix.cases] == [uri]


@pytest.mark.parametrize(("uri", "message"), [
    ("qemu://kvm7/system", "needs libvirt's ssh transport"),
    ("qemu+tcp://10.0.0.7/system", "needs libvirt's ssh transport"),
    ("qemu+ssh://lab@kvm7/session", "through its system libvirtd"),
])
def test_remote_hosts_a_run_cannot_use_are_refused(tmp_path: Path, uri: str,
                                                   message: str) -> None:
    with pytest.raises(InputError) as err:
        load_matrix(matrix_file(tmp_path, "[groups.g]\n[[groups.g.scenario]]\n",
                                hosts=f'[hosts.kvm7]\nuri = "{uri}"\nvcpus = 8\nmemory = 8192\n'))
    assert "[hosts.kvm7]" in err.value.problem and message in err.value.problem


@pytest.mark.parametrize(("uri", "message"), [
    ("qemu:///embed?root=/tmp/x", "a matrix gives each worker its own root"),
    ("xen:///system", "is not a QEMU libvirt URI"),
    ("qemu:///elsewhere", "is not a local QEMU driver URI"),
])
def test_local_uris_a_matrix_cannot_use_are_refused(tmp_path: Path, uri: str,
                                                     message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_matrix(matrix_file(tmp_path, "[groups.g]\n[[groups.g.scenario]]\n",
                                hosts=f'[hosts.h]\nuri = "{uri}"\nvcpus = 8\nmemory = 8192\n'))


def test_hosts_are_selected_by_name_or_uri(tmp_path: Path) -> None:
    hosts = HOST + '[hosts.daemon]\nuri = "qemu:///system"\nvcpus = 4\nmemory = 2048\n'
    path = matrix_file(tmp_path, "[groups.g]\n[[groups.g.scenario]]\nname = 's'\n", hosts)
    assert {c.host.name for c in load_matrix(path).cases} == {"local", "daemon"}
    assert [c.host.name for c in load_matrix(path, ["qemu:///system"]).cases] == ["daemon"]
    assert [c.host.name for c in load_matrix(path, ["local"]).cases] == ["local"]
    with pytest.raises(InputError, match="no such host"):
        load_matrix(path, ["kvm9"])
    with pytest.raises(InputError, match="no such host in the matrix file"):
        load_matrix(path, ["qemu+ssh://lab@kvm9/system"])
    with pytest.raises(InputError, match="needs libvirt's ssh transport"):
        load_matrix(path, ["qemu+tcp://kvm9/system"])


def test_scenarios_may_name_their_hosts_and_guests(tmp_path: Path) -> None:
    hosts = HOST + '[hosts.daemon]\nuri = "qemu:///system"\nvcpus = 4\nmemory = 2048\n'
    path = matrix_file(tmp_path, """
        [guests.a]
        [guests.b]
        [groups.g]
        guests = "a"
        [[groups.g.scenario]]
        name = "s"
        hosts = ["daemon"]
        [[groups.g.scenario]]
        name = "t"
        guests = ["a", "b"]
        [[groups.g.scenario]]
        name = "u"
        guests = ["c"]
        """, hosts)
    with pytest.raises(InputError, match="scenario 'u': unknown guest 'c'"):
        load_matrix(path)
    path.write_text(path.read_text().replace('guests = ["c"]', ""))
    assert [c.case_id for c in load_matrix(path).cases] == [
        "g/s@daemon/a", "g/t@local/a", "g/t@daemon/a", "g/t@local/b", "g/t@daemon/b",
        "g/u@local/a", "g/u@daemon/a"]


def test_relative_image_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    m = load_matrix(matrix_file(tmp_path, """
        [guests.w]
        guest = "windows"
        image = "images/ws.qcow2"
        [groups.g]
        [[groups.g.scenario]]
        """))
    assert m.cases[0].spec.guest_settings.image == tmp_path / "images" / "ws.qcow2"


def test_a_file_without_hosts_runs_on_this_machine_at_its_size(tmp_path: Path) -> None:
    m = load_matrix(matrix_file(
        tmp_path, "[groups.g]\n[[groups.g.scenario]]\nboot-vcpus = 1\nadds = 0\n", hosts=""))
    (host,) = m.hosts
    assert host.uri == "qemu:///embed" and host.capacity.vcpus == os.cpu_count()


def test_cases_that_would_share_a_name_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="would share a name"):
        load_matrix(matrix_file(tmp_path, "[groups.g]\n[[groups.g.scenario]]\n"
                                          "boot-vcpus = 1\nadds = [1, 1]\n"))
    with pytest.raises(InputError, match="would share a name"):
        load_matrix(matrix_file(tmp_path, """
            [groups."a b"]
            [[groups."a b".scenario]]
            name = "s"
            [groups.a-b]
            [[groups.a-b.scenario]]
            name = "s"
            """))


@pytest.mark.parametrize(("text", "message"), [
    ("[groups.g\n", "is not valid TOML"),
    ("name = 'x'\n", r"no \[groups.NAME\] with scenarios"),
    ("[groups.g]\ncores = 4\n", "has no scenarios"),
    ("[groups.g]\n[[groups.g.scenario]]\nname = 'a'\n[[groups.g.scenario]]\nname = 'a'\n",
     "needs a unique, non-empty name"),
])
def test_malformed_files_are_input_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_matrix(matrix_file(tmp_path, text))


def test_the_cli_refuses_a_bad_file_before_pytest_starts(tmp_path: Path) -> None:
    path = matrix_file(tmp_path, "[groups.g]\n[[groups.g.scenario]]\nboot-vcpu = 1\n")
    proc = subprocess.run([sys.executable, "-m", "harness", "matrix", str(path)],
                          capture_output=True, text=True, cwd=REPO, check=False,
                          env=os.environ | {"PYTHONPATH": str(REPO)})
    assert proc.returncode == 2
    assert "unknown key 'boot-vcpu'" in proc.stderr and "did you mean" in proc.stderr
    assert "test session starts" not in proc.stdout


def test_the_cli_is_pytest_with_the_matrix_on_n_workers(tmp_path: Path) -> None:
    parser = build_parser()
    args = parser.parse_args(["matrix", "x.toml", "--workers", "2", "--host", "local",
                              "--junitxml", "j.xml", "--artifacts", "art"])
    argv = pytest_args(args)
    assert argv[:3] == ["x.toml", "--hotadd-matrix", "x.toml"]
    for pair in (["-n", "2"], ["--hotadd-host", "local"], ["--junitxml", "j.xml"],
                 ["--hotadd-artifacts", "art"]):
        assert any(argv[i:i + 2] == pair for i in range(len(argv))), pair
    serial = pytest_args(parser.parse_args(["matrix", "x.toml"]))
    assert "-n" not in serial and "no:xdist" in serial


def test_the_night_fails_on_any_verdict_and_errors_without_one() -> None:
    assert night_outcome(["pass", "pass"]) is Outcome.PASS
    assert night_outcome(["pass", "error", "fail"]) is Outcome.FAIL
    assert night_outcome(["pass", "error"]) is Outcome.ERROR
    assert night_outcome(["pass", "interrupted"]) is Outcome.ERROR
    assert night_outcome(["skipped"]) is None


def test_matrix_page_shows_each_cell_escaped_and_cases_without_result(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    (run / "report.html").write_text("<html></html>")
    props = [("hotadd.outcome", "fail"), ("hotadd.verdict", "fail"), ("hotadd.worker", "gw1"),
             ("hotadd.artifacts", str(run)), ("hotadd.add.1.ost_ms", "19.6"),
             ("hotadd.add.1.start_to_end_ms", "101.2"), ("hotadd.add.1.end_state", "failure"),
             ("hotadd.error", "<script>alert(1)</script>")]
    cell = CaseCell.from_properties("g/s@h/<b>[x=1]", "g/s[x=1]", "h/<b>", props,
                                    pytest_outcome="failed", seconds=3.0, longrepr=None)
    page = write_matrix_page(tmp_path / "out", "night <1>", "", [
        ("g/s[x=1]", "h/<b>"), ("g/t", "h/<b>")], [cell])
    html = page.read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html and "night &lt;1&gt;" in html
    assert "#1 failure: _OST 19.6 ms, start&rarr;end 101.2 ms" in html
    assert 'href="../runs/a/report.html"' in html
    assert "gw1" in html and ">not run<" in html
    assert '"verdict": "fail"' in (tmp_path / "out" / "matrix.json").read_text()


@pytest.fixture
def short_cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A cache directory short enough for libvirt roots (QEMU's sockets live under them)."""
    path = Path(tempfile.mkdtemp(prefix="hc-", dir="/tmp"))
    monkeypatch.setenv("HOTADD_CACHE_DIR", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_worker_roots_are_one_per_process_and_free_again_when_it_exits(
        short_cache: Path) -> None:
    tmp_path = short_cache
    code = ("import sys; from harness.host.roots import claim_worker_root; "
            "print(claim_worker_root().path, flush=True); sys.stdin.readline()")
    env = os.environ | {"PYTHONPATH": str(REPO)}
    other = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert other.stdout is not None
        theirs = Path(other.stdout.readline().strip())
        mine = roots.claim_worker_root()
        assert theirs == tmp_path / "libvirt-workers" / "0"
        assert mine.path == tmp_path / "libvirt-workers" / "1"
        assert mine.uri == f"qemu:///embed?root={mine.path}"
        assert roots.sweep_dead_worker_roots() == []  # slot 0 is held, slot 1 is mine
    finally:
        other.kill()
        other.wait()
    again = roots.claim_worker_root()
    assert again.path == theirs  # its process is gone: the slot is free
    again.release()
    mine.release()
    assert roots.sweep_dead_worker_roots() == []  # free, but nothing left in them


def test_worker_roots_under_a_too_long_cache_say_how_to_shorten_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOTADD_CACHE_DIR", str(tmp_path / ("x" * 60)))
    with pytest.raises(InputError) as err:
        roots.claim_worker_root()
    assert "UNIX socket path limit" in err.value.problem
    assert "HOTADD_CACHE_DIR" in str(err.value.fix)
    assert roots._try_claim(0) is not None  # the refused claim let its slot go


def test_a_cases_properties_read_back_typed() -> None:
    """What the matrix page reads of a case: hotadd's properties, others left out, adds in
    order whatever order they came in, absent ones as absent."""
    got = read_properties([("hotadd.add.2.end_state", "complete"), ("other", "x"),
                           ("hotadd.add.1.ost_ms", "19.6"), ("hotadd.outcome", "pass"),
                           ("hotadd.add.10.start_to_end_ms", "5.0")])
    assert (got.outcome, got.verdict, got.worker, got.artifacts, got.error) == (
        "pass", "none", "-", None, None)
    assert got.adds == (AddLatency(1, "-", "19.6", "-"), AddLatency(2, "complete", "-", "-"),
                        AddLatency(10, "-", "-", "5.0"))
    assert read_properties([]).outcome is None


def test_a_matrix_scenario_takes_the_key(tmp_path: Path) -> None:
    m = load_matrix(matrix_file(tmp_path, """
        [groups.g]
        [[groups.g.scenario]]
        name = "racing"
        adds = 2
        load-during-adds = true
        """))
    assert [c.spec.load_during_adds for c in m.cases] == [True]
    with pytest.raises(InputError, match="--load-during-adds with no add"):
        load_matrix(matrix_file(tmp_path, """
            [groups.g]
            [[groups.g.scenario]]
            name = "none"
            adds = 0
            load-during-adds = true
            """))

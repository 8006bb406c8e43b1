"""`hotadd matrix` and `pytest --hotadd-matrix` on real pytest-xdist workers, without a VM:
every case of this matrix fails before booting (its Windows image does not exist), which is
enough to see the whole path: collection, distribution over workers, per-case JUnit
properties, the controller's matrix page and the night's exit code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MATRIX = """
name = "nowhere"
[hosts.local]
uri = "qemu:///embed"
vcpus = 4
memory = 8192
[guests.ws]
guest = "windows"
image = "missing.qcow2"
[groups.g]
boot-vcpus = 1
[[groups.g.scenario]]
name = "s"
adds = [1, 2, 3]
[[groups.g.scenario]]
name = "t"
"""


@pytest.fixture
def env() -> Iterator[dict[str, str]]:
    """A cache of its own, short enough for the workers' libvirt roots."""
    cache = Path(tempfile.mkdtemp(prefix="hc-", dir="/tmp"))
    yield os.environ | {"PYTHONPATH": str(REPO), "HOTADD_CACHE_DIR": str(cache)}
    shutil.rmtree(cache, ignore_errors=True)


def properties(junit: Path) -> dict[str, dict[str, str]]:
    cases = {}
    for tc in ET.parse(junit).iter("testcase"):
        props = {p.get("name", ""): p.get("value", "") for p in tc.iter("property")}
        cases[props["hotadd.matrix.case"]] = props | {"_name": tc.get("name", "")}
    return cases


def test_hotadd_matrix_runs_cases_on_workers_and_reports_once(
        tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "m.toml"
    path.write_text(MATRIX)
    junit, art = tmp_path / "j.xml", tmp_path / "art"
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "matrix", str(path), "--workers", "2",
         "--junitxml", str(junit), "--artifacts", str(art)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300, check=False)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]  # no verdict
    cases = properties(junit)
    assert sorted(cases) == ["g/s@local/ws[adds=1]", "g/s@local/ws[adds=2]",
                             "g/s@local/ws[adds=3]", "g/t@local/ws"]
    for case_id, props in cases.items():
        assert props["_name"] == case_id  # JUnit keeps the whole id
        assert props["hotadd.worker"] in {"gw0", "gw1"}
        assert props["hotadd.host"] == "local"
        assert props["hotadd.host.uri"].startswith(
            f"qemu:///embed?root={env['HOTADD_CACHE_DIR']}/libvirt-workers/")
        assert props["hotadd.matrix.guest"] == "ws"
        assert (props["hotadd.outcome"], props["hotadd.verdict"]) == ("error", "none")
        assert "missing.qcow2 does not exist" in props["hotadd.error"]
        run_dir = Path(props["hotadd.artifacts"])
        assert run_dir.parent == art
        assert json.loads((run_dir / "result.json").read_text())["outcome"] == "error"
    page = (art / "matrix.html").read_text()  # the controller's, over every worker's cases
    assert page.count('data-case="') == 4 and "4 error" in page
    summary = json.loads((art / "matrix.json").read_text())
    assert summary["counts"] == {"error": 4}
    assert "matrix error; page" in proc.stdout


def test_plain_pytest_with_the_option_runs_the_same_matrix(
        tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "m.toml"
    path.write_text(MATRIX)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--hotadd-matrix", str(path), "-n", "2",
         "-p", "no:cacheprovider", "--hotadd-artifacts", str(tmp_path / "art"), "-q"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300, check=False)
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert "4 failed" in proc.stdout
    assert (tmp_path / "art" / "matrix.html").is_file()


def test_a_bad_matrix_is_a_usage_error_in_plain_pytest(
        tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "m.toml"
    path.write_text(MATRIX.replace("adds = [1, 2, 3]", "adds = [1, 2, 3]\nveto = 1"))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--hotadd-matrix", str(path), "-p", "no:cacheprovider"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300, check=False)
    assert proc.returncode == 4  # pytest's usage error
    assert "unknown key 'veto'" in proc.stderr

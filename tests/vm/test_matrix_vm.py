"""`hotadd matrix examples/smoke.toml --workers 2` end to end on the reference guest: JUnit
properties per case, the controller's matrix page rendered in headless Chromium, and no QEMU
left; and a worker killed mid-run leaves nothing the next run's sweep does not clear."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.host import roots
from harness.host.roots import qemu_pids_mentioning, sweep_dead_worker_roots, workers_dir
from tests.support.processes import run_hotadd
from tests.vm.test_report import chromium, count_color, png_pixels

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "examples" / "smoke.toml"


@pytest.mark.timeout(1200)
def test_smoke_matrix_on_two_workers(tmp_path: Path) -> None:
    junit, art = tmp_path / "smoke.xml", tmp_path / "art"
    proc = run_hotadd("matrix", str(SMOKE), "--workers", "2", "--junitxml", str(junit),
                      "--artifacts", str(art), timeout=1100)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]

    cases = {}
    for tc in ET.parse(junit).iter("testcase"):
        props = {p.get("name", ""): p.get("value", "") for p in tc.iter("property")}
        cases[tc.get("name")] = props
    assert sorted(cases) == sorted([
        "hotplug/add@local/reference[method=setVcpu]",
        "hotplug/add@local/reference[method=setVcpusFlags]",
        "probe/veto-hot-added@local/reference", "probe/no-replay@local/reference"])
    uris = set()
    for name, props in cases.items():
        assert props["hotadd.verdict"] == "pass" and props["hotadd.outcome"] == "pass", name
        assert props["hotadd.host"] == "local" and props["hotadd.matrix.guest"] == "reference"
        assert props["hotadd.guest"].startswith("reference://hotadd-reference-")
        assert props["hotadd.add.1.end_state"] == (
            "failure" if "veto" in name else "complete")
        uris.add(props["hotadd.host.uri"])
    assert {p["hotadd.worker"] for p in cases.values()} == {"gw0", "gw1"}
    assert len(uris) == 2  # one embedded libvirt root per worker
    assert len({p["hotadd.guest"] for p in cases.values()}) == 4  # no name shared

    page = art / "matrix.html"
    dom = chromium(["--dump-dom", page.as_uri()], tmp_path).stdout
    assert dom.count('data-case="') == 4 and "4 pass" in dom
    for name in cases:
        assert f'data-case="{name}"' in dom
    links = [line.split('href="')[1].split('"')[0] for line in dom.splitlines()
             if 'href="' in line]
    assert len(links) == 4 and all((art / link).is_file() for link in links)
    png = tmp_path / "matrix.png"
    chromium(["--window-size=1200,700", f"--screenshot={png}", page.as_uri()], tmp_path)
    _, _, pixels = png_pixels(png.read_bytes())
    assert count_color(pixels, "#2e7d32") > 4 * 100  # four green "pass" badges drawn
    assert count_color(pixels, "#c62828") == 0  # and no red "fail" one

    for uri in uris:
        assert not qemu_pids_mentioning(uri.split("root=")[1])
    for p in cases.values():
        assert not qemu_pids_mentioning(p["hotadd.guest"].split("://")[1])


@pytest.mark.timeout(600)
def test_a_killed_workers_leftovers_are_swept_by_the_next_run() -> None:
    slot = 900 + os.getpid() % 90  # a slot of our own, far from real workers' low numbers
    lock = workers_dir() / f"{slot}.lock"
    root = workers_dir() / str(slot)
    lock.touch()
    worker = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", "--boot-vcpus", "1", "--cores", "2",
         "--adds", "1", "--run-dir", str(root) + "-run", "--libvirt-uri",
         f"qemu:///embed?root={root}"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        env=os.environ | {"PYTHONPATH": str(REPO)})
    try:
        assert worker.stderr is not None
        for line in worker.stderr:  # a restored guest (the default start) runs from here on
            if "restore: done" in line:
                break
        else:
            pytest.fail("hotadd run ended before its guest was restored")
        worker.send_signal(signal.SIGKILL)  # a crashed worker: no teardown at all
        worker.wait()
        assert qemu_pids_mentioning(str(root)), "the killed worker's QEMU should outlive it"
        assert roots.has_leftovers(root)

        said = sweep_dead_worker_roots()

        assert any(str(root) in s and "removed leftovers" in s for s in said), said
        assert not qemu_pids_mentioning(str(root))
        assert not roots.has_leftovers(root)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        subprocess.run([sys.executable, "-m", "harness", "sweep", "--libvirt-uri",
                        f"qemu:///embed?root={root}"], capture_output=True, check=False,
                       env=os.environ | {"PYTHONPATH": str(REPO)})
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(str(root) + "-run", ignore_errors=True)
        lock.unlink(missing_ok=True)

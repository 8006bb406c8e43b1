"""The HTML report, from a real run directory (`hotadd run` on the reference guest), rendered
by headless Chromium: the page loads, the timeline shows every processor and episode, and a
failing run's findings are marked in the picture (found in the screenshot's pixels)."""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from harness import cli
from harness.commands import report as command
from harness.oracle import HostFacts, Profile, check
from harness.records import NotifyRecord, NotifyState, Phase, dump_records, read_records
from harness.report.html import REPORT_FILE
from harness.report.timeline import COLORS, Mark, build_timeline
from harness.result_file import read_result
from tests.support.processes import qemu_pids_mentioning, run_hotadd

CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module")
def veto_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A real run whose second hot-add is vetoed: start then failure for processor 3."""
    base = tmp_path_factory.mktemp("report")
    root = base / "libvirt"
    proc = run_hotadd("run", "--libvirt-uri", f"qemu:///embed?root={root}", "--run-dir",
                      str(base / "run"), "--quiet", "--veto-cpu", "3")
    assert not qemu_pids_mentioning(str(root))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return base / "run", proc.stdout


def regenerate(run_dir: Path) -> Path:
    """`hotadd report RUN_DIR`, through the CLI when it is registered there."""
    if "harness.commands.report" in cli.COMMAND_MODULES:
        proc = run_hotadd("report", str(run_dir))
        assert proc.returncode == 0, proc.stderr
        return Path(proc.stdout.strip())
    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["report", str(run_dir)])
    assert args.func(args) == 0
    return run_dir / REPORT_FILE


def failing_copy(run_dir: Path, target: Path) -> Path:
    """The veto run with the vetoed processor's Failure removed, re-judged: a probe that
    vetoed and was never told the add failed."""
    shutil.copytree(run_dir, target)
    records = [r for r in read_records(target / "records.jsonl")
               if not (isinstance(r, NotifyRecord) and r.phase is Phase.HOTADD
                       and r.state is NotifyState.FAILURE)]
    (target / "records.jsonl").write_text(dump_records(records))
    result = json.loads((target / "result.json").read_text())
    verdict = check(records, Profile.LINUX, HostFacts(adds_performed=2, adds_expected_ok=1,
                                                      boot_cpus=2, guest_count=3))
    assert not verdict.passed
    result.update(verdict=verdict.to_dict(), outcome="fail", exit_code=1)
    (target / "result.json").write_text(json.dumps(result))
    (target / REPORT_FILE).unlink()
    return target


def test_run_prints_the_report_and_report_regenerates_it(veto_run: tuple[Path, str]) -> None:
    run_dir, stdout = veto_run
    page = run_dir / REPORT_FILE
    assert f"report: {page}" in stdout.splitlines()
    first = page.read_text()
    page.unlink()
    assert regenerate(run_dir) == page
    again = page.read_text()
    strip = [line for line in first.splitlines() if "generated" not in line]
    assert strip == [line for line in again.splitlines() if "generated" not in line]


def test_timeline_has_every_processor_and_episode(veto_run: tuple[Path, str]) -> None:
    run_dir, _ = veto_run
    tl = build_timeline(read_result(run_dir / "result.json"),
                        read_records(run_dir / "records.jsonl"))
    assert [lane.title for lane in tl.lanes] == [
        "probe", "processor 0", "processor 1", "processor 2", "processor 3"]
    assert [p.title for p in tl.panels] == [
        "load and replay", "add 1: vCPU 2", "add 2: vCPU 3", "unload"]
    p3 = [p for p in tl.points if p.lane == "p3"]
    marks = [p.mark for p in sorted(p3, key=lambda p: p.t_ms)]
    assert marks[0] is Mark.HOST_ADD and Mark.OST in marks
    assert marks[-2:] == [Mark.START, Mark.FAILURE]
    # host and guest on one clock: each add's answers come after its host call, in order
    for lane in ("p2", "p3"):
        times = {p.mark: p.t_ms for p in tl.points if p.lane == lane}
        assert times[Mark.HOST_ADD] < times[Mark.START] < times.get(
            Mark.COMPLETE, times.get(Mark.FAILURE, 0))
        assert times[Mark.HOST_ADD] < times[Mark.OST]


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB/RGBA, non-interlaced PNG (what Chromium writes) into rows."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    height = channels = 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and color in (2, 6) and interlace == 0
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line) if channels == 3 else bytes(
            v for j in range(0, stride, 4) for v in line[j:j + 3]))
        prev = line
    return width, height, rows


def count_color(rows: list[bytes], hex_color: str) -> int:
    """Pixels of exactly this colour."""
    rgb = bytes.fromhex(hex_color.lstrip("#"))
    return sum(1 for row in rows for i in range(0, len(row), 3) if row[i:i + 3] == rgb)


def chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM, "chromium is not installed: apt-get install chromium"
    profile = tmp / "chromium-profile"
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={profile}", "--hide-scrollbars", *args],
        capture_output=True, text=True, timeout=120, check=False)


def screenshot(page: Path, tmp: Path) -> list[bytes]:
    png = tmp / f"{page.parent.name}.png"
    proc = chromium(["--window-size=1200,1500", f"--screenshot={png}", page.as_uri()], tmp)
    assert png.is_file(), proc.stderr[-2000:]
    width, height, rows = png_pixels(png.read_bytes())
    assert (width, height) == (1200, 1500)
    return rows


def test_chromium_renders_the_page_and_the_failure_shows_in_the_picture(
        veto_run: tuple[Path, str], tmp_path: Path) -> None:
    run_dir, _ = veto_run
    bad = failing_copy(run_dir, tmp_path / "bad")
    page = regenerate(bad)

    dom = chromium(["--dump-dom", page.as_uri()], tmp_path).stdout
    assert dom.count("<svg") == 1 and "processor 3" in dom
    findings = json.loads((bad / "result.json").read_text())["verdict"]["findings"]
    assert "hotadd.veto_failure" in {f["rule_id"] for f in findings}
    for f in findings:
        assert f["rule_id"] in dom and f["message"] in dom
    assert "no complete/failure" in dom  # the vetoed Start left open, named in the picture

    good = screenshot(run_dir / REPORT_FILE, tmp_path)
    failing = screenshot(page, tmp_path)
    flag = COLORS["flag"]
    legend = count_color(good, flag)  # a passing run has the colour only in the legend
    assert legend > 0
    assert count_color(failing, flag) > legend + 200  # the findings' rings and badges
    assert count_color(good, COLORS["failure"]) > 20  # the veto's failure cross is drawn

"""The console follower: lines another process appends to a file arrive whole, in order, with
the time they were read (a real writer process; waits are on the follower, never sleeps)."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path

from harness.host.console import ConsoleFollower, ConsoleLine

CTX = multiprocessing.get_context("fork")


def _writer(path: str, go: Connection) -> None:
    with open(path, "ab", buffering=0) as f:
        while (chunk := go.recv()) is not None:
            f.write(chunk)


def _has(text: str) -> Callable[[Sequence[ConsoleLine]], bool]:
    def ready(lines: Sequence[ConsoleLine]) -> bool:
        return any(line.text == text for line in lines)
    return ready


def test_lines_appended_by_another_process_arrive_whole_in_order_and_timed(
        tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_bytes(b"boot noise before the watch\n")
    recv, send = CTX.Pipe(duplex=False)
    writer = CTX.Process(target=_writer, args=(str(log), recv))
    writer.start()
    try:
        with ConsoleFollower(log) as watch:
            before = time.time()
            send.send(b"hotadd-probe: {\"seq\":1}\npar")
            assert watch.wait(_has('hotadd-probe: {"seq":1}'), 30)
            send.send(b"tial\r\n")
            assert watch.wait(_has("partial"), 30)
            lines = watch.lines()
    finally:
        send.send(None)
        writer.join(30)
    assert [line.text for line in lines] == ['hotadd-probe: {"seq":1}', "partial"]
    assert before <= lines[0].t_wall <= lines[1].t_wall <= time.time()


def test_subscribers_see_every_line_and_a_closed_watch_stops_waiting(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    seen: list[str] = []
    watch = ConsoleFollower(log, from_start=True)
    watch.subscribe(lambda line: seen.append(line.text))
    with open(log, "a") as f:
        f.write("one\ntwo\n")
    assert watch.wait(_has("two"), 30)
    watch.close()
    assert seen == ["one", "two"]
    assert watch.wait(_has("never"), 30) is False

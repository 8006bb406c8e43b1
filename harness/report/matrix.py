"""The night's one page: a matrix run's scenarios x hosts/guests, each cell the verdict and the
per-add latencies, linking that case's own run report.

Built from what each test reported (its JUnit properties, read back typed by
`harness.report.junit.read_properties`), which the xdist controller receives from every
worker; so the page is written once, by the controller, and needs no worker's files.
`matrix.json` beside it holds the same cells as data.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.report.html import REPORT_FILE, template
from harness.report.junit import AddLatency, read_properties

MATRIX_PAGE = "matrix.html"
MATRIX_JSON = "matrix.json"
TEMPLATE = "matrix.html.j2"


@dataclass(frozen=True)
class CaseCell:
    """One case's result as the page shows it."""

    case_id: str
    row: str  # group/scenario[values]
    column: str  # host/guest
    outcome: str  # pass, fail, error, interrupted; "not run" when no result arrived
    verdict: str  # pass, fail, none
    worker: str
    adds: tuple[AddLatency, ...]
    run_dir: str | None
    error: str | None
    seconds: float

    @classmethod
    def from_properties(cls, case_id: str, row: str, column: str,
                        props: Iterable[tuple[str, str]], *, pytest_outcome: str,
                        seconds: float, longrepr: str | None) -> CaseCell:
        p = read_properties(props)
        outcome = p.outcome or ("error" if pytest_outcome != "skipped" else "skipped")
        return cls(case_id, row, column, outcome, p.verdict, p.worker, p.adds, p.artifacts,
                   p.error or (longrepr if outcome == "error" else None), seconds)


@dataclass(frozen=True)
class _PageCell:
    cell: CaseCell | None
    link: str | None
    expected: bool  # the matrix lists this scenario on this host/guest


@dataclass(frozen=True)
class _Page:
    title: str
    description: str
    generated: str
    counts: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, tuple[_PageCell, ...]], ...]


def _link(run_dir: str | None, directory: Path) -> str | None:
    if run_dir is None or not (Path(run_dir) / REPORT_FILE).is_file():
        return None
    return Path(os.path.relpath(Path(run_dir) / REPORT_FILE, directory)).as_posix()


def write_matrix_page(directory: Path, title: str, description: str,
                      order: Sequence[tuple[str, str]], results: Iterable[CaseCell]) -> Path:
    """Write matrix.html and matrix.json in `directory`. `order` lists every case's (row,
    column) as the matrix file does; `results` are the cells that arrived."""
    directory.mkdir(parents=True, exist_ok=True)
    cells = {(c.row, c.column): c for c in results}
    rows = list(dict.fromkeys(r for r, _ in order))
    expected = set(order)
    columns = tuple(dict.fromkeys(c for _, c in order))
    counts: dict[str, int] = {}
    for row, column in order:
        cell = cells.get((row, column))
        outcome = cell.outcome if cell else "not run"
        counts[outcome] = counts.get(outcome, 0) + 1
    page = _Page(
        title=title, description=description,
        generated=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        counts=", ".join(f"{n} {k}" for k, n in sorted(counts.items())), columns=columns,
        rows=tuple((r, tuple(_PageCell(c := cells.get((r, col)),
                                       _link(c.run_dir, directory) if c else None,
                                       (r, col) in expected)
                             for col in columns)) for r in rows))
    path = directory / MATRIX_PAGE
    path.write_text(template(TEMPLATE).render(page=page))
    (directory / MATRIX_JSON).write_text(json.dumps(
        {"schema": "hotadd.matrix/1", "title": title, "counts": counts,
         "cases": [dataclasses.asdict(c) for c in cells.values()]}, indent=2) + "\n")
    return path

"""`hotadd report RUN_DIR`: (re)build the HTML report of a run or of a pytest session."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from harness.errors import Outcome, exit_code
from harness.report.html import write_report


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "report", help="write RUN_DIR/report.html from its result.json and records.jsonl",
        description="Regenerate the static HTML report (summary, findings, timeline picture) "
                    "of a 'hotadd run' directory, or of a pytest --hotadd-artifacts directory "
                    "(one section per test).")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.set_defaults(func=report_command)


def report_command(args: argparse.Namespace) -> int:
    print(write_report(args.run_dir))
    return exit_code(Outcome.PASS)

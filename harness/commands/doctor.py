"""`hotadd doctor`: what this host can do for hotadd, and what to install (exit 2 if anything
is missing)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from harness.doctor import render, run_checks
from harness.errors import Outcome, exit_code


def _command(args: argparse.Namespace) -> int:
    checks = run_checks()
    if args.json:
        out: list[dict[str, Any]] = [asdict(c) for c in checks]
        print(json.dumps(out, indent=2))
    else:
        print(render(checks))
    return exit_code(Outcome.PASS if all(c.ok for c in checks) else Outcome.ERROR)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("doctor", help="what this host can do, and what to install")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_command)

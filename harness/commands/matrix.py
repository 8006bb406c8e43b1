"""`hotadd matrix FILE.toml`: a scenario matrix in parallel, one result for the night.

A thin wrapper: it checks the whole file first (so a typo fails in a second, not after an
hour), then runs `pytest FILE --hotadd-matrix FILE -n N` in this process; the plugin does the
work (`harness.matrix_plugin`) and sets the exit code: 0 every case passed, 1 a verdict failed
somewhere, 2 a case could not give a verdict (or pytest itself could not run).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path
from typing import Any

from harness.errors import ExitCode, InputError, Outcome, exit_code
from harness.matrix import load_matrix


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "matrix", help="run a TOML matrix of scenarios on parallel workers (pytest-xdist)",
        description="Run every scenario x host x guest of a matrix file as a pytest test, on "
                    "N parallel workers within each host's capacity. Writes JUnit XML (one "
                    "test case per scenario) and matrix.html. Exit 0 all pass, 1 a verdict "
                    "failed, 2 a case had no verdict (harness or input error).")
    p.add_argument("file", type=Path, metavar="FILE.toml", help="the matrix (see examples/)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="parallel workers (pytest-xdist processes; default 1: no workers)")
    p.add_argument("--host", action="append", default=[], metavar="NAME|URI",
                   help="run on this host of the file only (repeatable; default: all)")
    p.add_argument("--junitxml", type=Path, metavar="F", help="write JUnit XML here")
    p.add_argument("--artifacts", type=Path, metavar="DIR",
                   help="the cases' run directories and matrix.html "
                        "(default ./runs/TIME-matrix-NAME)")
    p.add_argument("-v", "--verbose", action="store_true", help="pytest -v: every case's line "
                   "and, for failures, its progress")
    p.set_defaults(func=matrix_command)


def pytest_args(args: argparse.Namespace) -> list[str]:
    """The pytest command line `hotadd matrix` runs (`pytest` + these is the same run)."""
    argv = [str(args.file), "--hotadd-matrix", str(args.file),
            "-c", os.devnull, "--rootdir", str(args.file.resolve().parent),  # not a project's
            "-p", "no:cacheprovider", "--assert=plain",  # no test code to rewrite
            "-v" if args.verbose else "-q"]
    argv += [x for h in args.host for x in ("--hotadd-host", h)]
    argv += ["-n", str(args.workers)] if args.workers > 1 else ["-p", "no:xdist"]
    if args.junitxml is not None:
        argv += ["--junitxml", str(args.junitxml)]
    if args.artifacts is not None:
        argv += ["--hotadd-artifacts", str(args.artifacts)]
    return argv


def matrix_command(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise InputError(f"--workers {args.workers} must be >= 1", "give a positive count")
    load_matrix(args.file, args.host)  # the whole file, checked before pytest starts
    if args.workers > 1 and importlib.util.find_spec("xdist") is None:
        raise InputError("--workers needs pytest-xdist, which is not installed",
                         "pip install pytest-xdist (a dependency of hotadd: reinstall it)")
    import pytest  # here, not at the top: pytest takes ~0.1 s to import, and every other
    # command (a warm `hotadd run` is seconds) builds this parser

    code = int(pytest.main(pytest_args(args)))
    if code in (ExitCode.PASS, ExitCode.VERDICT_FAIL, ExitCode.HARNESS_ERROR):
        return code  # the plugin's mapping of the cases' outcomes
    return int(exit_code(Outcome.ERROR))  # pytest could not run (usage error, no tests...)

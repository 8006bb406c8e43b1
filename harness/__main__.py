"""`python -m harness` is the same entry point as the `hotadd` console script."""

from harness.cli import run

raise SystemExit(run())

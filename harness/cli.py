"""The `hotadd` command line: parse, call one function, map the outcome to an exit code.

Each subcommand is one module of `harness.commands` exposing `add_parser(subparsers) -> None`
that sets `func=callable(args) -> int` on its parser. This file only lists those modules, so
adding a command never means editing another command's code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence

from harness import __version__, interrupts
from harness.errors import HotaddError, exit_code

COMMAND_MODULES = tuple(f"harness.commands.{name}" for name in (
    "run", "check", "doctor", "guest", "image", "sweep", "report", "matrix"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hotadd",
        description="Hot-add vCPUs to a real guest and check the processor-change notifications.",
    )
    parser.add_argument("--version", action="version", version=f"hotadd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; return its exit code. Never raises for expected failures."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # SIGTERM/SIGHUP (a CI job's timeout, a lab scheduler) unwind like Ctrl-C, so every
    # context manager tears its VM down instead of leaving QEMU running.
    interrupts.install()
    try:
        code: int = args.func(args)
        return code
    except HotaddError as exc:
        print(f"hotadd: error: {exc.message}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt as exc:
        left = interrupts.leftovers()
        if left:
            print(f"hotadd: interrupted ({interrupts.signal_name(exc)}) before the teardown "
                  f"finished: left behind {'; '.join(left)}\n  fix: run 'hotadd sweep' "
                  "(with the same --libvirt-uri) to remove them", file=sys.stderr)
        else:
            print(f"hotadd: interrupted ({interrupts.signal_name(exc)}); the run was torn "
                  "down", file=sys.stderr)
        return exit_code(exc)
    except Exception as exc:  # a bug in the harness is still a harness error, not a verdict
        traceback.print_exc()
        print("hotadd: internal error (a bug in hotadd: please report it with the trace above)",
              file=sys.stderr)
        return exit_code(exc)


def run() -> int:
    """Console-script entry point (and `python -m harness`). This process owns the QEMU it
    starts, so it reaps it the moment it exits (harness.host.reaper); `main` alone, as a
    library or a test calls it, leaves the caller's process as it is."""
    from harness.host import reaper

    reaper.become_subreaper()
    return main()

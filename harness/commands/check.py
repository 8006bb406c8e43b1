"""`hotadd check`: judge a records file by the oracle and print the verdict.

Exit 0 pass, 1 fail, 2 unreadable input (the `InputError` names file:line and why; the CLI
maps it). `--json` prints `Verdict.to_dict()` on stdout and nothing else there.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from harness.errors import InputError, Outcome, exit_code
from harness.oracle.engine import check
from harness.oracle.host import HostFacts
from harness.oracle.rules import Profile
from harness.oracle.verdict import render_verdict
from harness.records import iter_record_file


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def add_parser(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "check",
        help="check a probe's notification records against the ordering rules",
        description="Check a records file (record format v1, JSON Lines) against the oracle's "
                    "rules (docs/oracle-rules.md). Exit 0 pass, 1 fail, 2 unreadable input.",
    )
    parser.add_argument("file", metavar="FILE", help="records.jsonl written by the probe")
    parser.add_argument("--profile", choices=[p.value for p in Profile],
                        default=Profile.WINDOWS.value,
                        help="whose semantics: windows (the KMDF probe) or linux (the reference "
                             "guest's probe module); default windows")
    parser.add_argument("--adds", type=_count, metavar="N",
                        help="vCPU hot-adds the host performed (cross-check hot-add Starts)")
    parser.add_argument("--adds-ok", type=_count, metavar="N",
                        help="of those, adds expected to succeed (cross-check Completes)")
    parser.add_argument("--boot-cpus", type=_count, metavar="N",
                        help="vCPUs the guest booted with (cross-check the load count)")
    parser.add_argument("--guest-count", type=_count, metavar="N",
                        help="processors the guest reports after the adds")
    parser.add_argument("--adds-during-load", type=_count, metavar="N", default=0,
                        help="of --adds, how many were in flight when the probe loaded "
                             "(hotadd run --load-during-adds): the replay may cover them")
    parser.add_argument("--json", action="store_true",
                        help="print the verdict as JSON (schema hotadd.verdict/1)")
    parser.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    host = None
    if any(v is not None for v in (args.adds, args.adds_ok, args.boot_cpus, args.guest_count)
           ) or args.adds_during_load:
        if args.adds is not None and args.adds_ok is not None and args.adds_ok > args.adds:
            raise InputError(f"--adds-ok {args.adds_ok} exceeds --adds {args.adds}",
                             "--adds-ok counts the adds expected to succeed, out of --adds")
        if args.adds_during_load and (args.adds is None or args.adds_during_load > args.adds):
            raise InputError(f"--adds-during-load {args.adds_during_load} needs --adds at "
                             "least as large", "give --adds N, the adds the host performed")
        host = HostFacts(adds_performed=args.adds, adds_expected_ok=args.adds_ok,
                         boot_cpus=args.boot_cpus, guest_count=args.guest_count,
                         adds_during_load=args.adds_during_load)
    # streamed: a file of any size is judged in one pass and bounded memory
    verdict = check(iter_record_file(args.file), Profile(args.profile), host)
    if args.json:
        json.dump(verdict.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_verdict(verdict))
    return exit_code(Outcome.PASS if verdict.passed else Outcome.FAIL)

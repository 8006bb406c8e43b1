"""`hotadd doctor`: what this host can do for hotadd, and what to install (exit 2 if anything
is missing)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from harness.doctor import render, run_checks, run_host_checks
from harness.errors import InputError, Outcome, exit_code
from harness.host.target import is_remote_uri


def _command(args: argparse.Namespace) -> int:
    if args.host and args.libvirt_uri and args.host != args.libvirt_uri:
        raise InputError("--host and --libvirt-uri name two different libvirts",
                         "give one of them (--host URI checks that host)")
    uri = args.host or args.libvirt_uri
    remote = uri if is_remote_uri(uri) else None
    checks = run_host_checks(remote) if remote is not None else run_checks(uri)
    if args.json:
        out: list[dict[str, Any]] = [asdict(c) for c in checks]
        print(json.dumps(out, indent=2))
    else:
        print(render(checks, remote))
    return exit_code(Outcome.PASS if all(c.ok for c in checks) else Outcome.ERROR)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("doctor", help="what this host can do, and what to install")
    p.add_argument("--json", action="store_true")
    p.add_argument("--host", default=None, metavar="URI",
                   help="check a remote libvirt host instead, e.g. qemu+ssh://root@kvm7/system "
                        "(its SSH login, libvirt, emulator, accelerator and staging cache)")
    p.add_argument("--libvirt-uri", default=None,
                   help="the libvirt to check (a qemu+ssh:// URI checks that host, as --host)")
    p.set_defaults(func=_command)

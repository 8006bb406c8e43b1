"""`hotadd sweep`: remove domains and scratch files left by crashed runs."""

from __future__ import annotations

import argparse

from harness.errors import Outcome, exit_code
from harness.host.connection import default_uri, open_connection
from harness.host.sweep import sweep


def _command(args: argparse.Namespace) -> int:
    conn = open_connection(args.libvirt_uri)
    try:
        print(sweep(conn).describe())
    finally:
        conn.close()
    return exit_code(Outcome.PASS)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sweep", help="remove domains and overlays left by crashed runs")
    p.add_argument("--libvirt-uri", default=None,
                   help=f"libvirt URI (default: {default_uri()})")
    p.set_defaults(func=_command)

"""`hotadd sweep`: remove domains and scratch files left by crashed runs, and prune old logs;
name the other libvirt roots hotadd used (`--all` sweeps them too)."""

from __future__ import annotations

import argparse

from harness.errors import InputError, Outcome, exit_code
from harness.host.connection import check_uri, default_uri, open_connection
from harness.host.sweep import other_uris, sweep, sweep_elsewhere
from harness.host.target import target_for


def _command(args: argparse.Namespace) -> int:
    if args.host and args.libvirt_uri and args.host != args.libvirt_uri:
        raise InputError("--host and --libvirt-uri name two different libvirts",
                         "give one of them (--host URI sweeps that host)")
    uri = args.host or args.libvirt_uri or default_uri()
    check_uri(uri)
    target = target_for(uri)
    conn = open_connection(uri)
    try:
        print(sweep(conn, target).describe())
    finally:
        conn.close()
        target.close()
    others = other_uris(uri)
    if not others:
        return exit_code(Outcome.PASS)
    if not args.all:
        print(f"sweep: looked only at {uri}; hotadd also used (or runs QEMU under): "
              f"{', '.join(others)}\n  'hotadd sweep --all' sweeps them too")
        return exit_code(Outcome.PASS)
    ok = True
    for other in others:
        swept, text = sweep_elsewhere(other)
        ok &= swept
        print(f"{other}: {text}")
    return exit_code(Outcome.PASS if ok else Outcome.ERROR)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sweep", help="remove domains and overlays left by crashed runs")
    p.add_argument("--libvirt-uri", default=None,
                   help=f"libvirt URI (default: {default_uri()})")
    p.add_argument("--host", default=None, metavar="URI",
                   help="sweep this libvirt host, e.g. qemu+ssh://root@kvm7/system: its "
                        "domains and scratch dirs left by crashed runs of this machine")
    p.add_argument("--all", action="store_true",
                   help="also sweep every other libvirt root hotadd used on this host, the "
                        "remote hosts its runs used (one not reachable is reported), and the "
                        "roots of hotadd QEMU processes still running")
    p.set_defaults(func=_command)

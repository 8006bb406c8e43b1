"""`hotadd run`: the scenario from the command line, with a readable timeline and verdict."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from harness.errors import HotaddError, InputError
from harness.guests.base import STATUS_INSUFFICIENT_RESOURCES, ProbeSettings
from harness.host.connection import default_uri
from harness.host.domain import Accelerator, Firmware, Topology
from harness.host.machine import HotplugMethod
from harness.progress import Progress
from harness.report.html import write_report
from harness.report.text import render_result
from harness.scenario import GuestChoice, ScenarioSpec, run_scenario


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of ids") from exc


def _status(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an NTSTATUS (e.g. 0xC000009A)") from exc


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "run", help="boot a guest, hot-add vCPUs, collect the probe's records, give a verdict",
        description="Run one hot-add scenario. Exit 0 pass, 1 verdict fail (or guest crash), "
                    "2 harness/infrastructure error.")
    g = p.add_argument_group("guest")
    g.add_argument("--guest", choices=[c.value for c in GuestChoice], default="reference")
    g.add_argument("--image", type=Path, help="Windows golden image (hotadd image build)")
    g.add_argument("--driver", type=Path, help="Windows probe driver .sys (default: from image)")
    g.add_argument("--memory", type=int, metavar="MIB", help="guest memory")
    g.add_argument("--firmware", choices=[f.value for f in Firmware])
    g.add_argument("--accel", choices=[a.value for a in Accelerator], default="auto")
    t = p.add_argument_group("vCPUs")
    t.add_argument("--sockets", type=int, default=1)
    t.add_argument("--dies", type=int, default=1)
    t.add_argument("--cores", type=int, default=4)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--boot-vcpus", type=int, default=2)
    t.add_argument("--max-vcpus", type=int,
                   help="must equal sockets*dies*cores*threads (checked)")
    t.add_argument("--adds", type=int, default=2, help="vCPUs to hot-add, one at a time")
    t.add_argument("--vcpu-ids", type=_int_list, default=(), metavar="ID,ID",
                   help="libvirt vCPU ids to add, in order (default: the next free one)")
    t.add_argument("--method", choices=[m.value for m in HotplugMethod], default="setVcpu")
    t.add_argument("--add-after-unload", action="store_true",
                   help="after unloading the probe, add one more vCPU and expect no record")
    pr = p.add_argument_group("probe")
    pr.add_argument("--veto-cpu", type=int, metavar="INDEX",
                    help="processor index whose Start the probe vetoes (an online one: replay)")
    pr.add_argument("--veto-status", type=_status, default=STATUS_INSUFFICIENT_RESOURCES,
                    help="NTSTATUS of the veto (default 0xC000009A)")
    pr.add_argument("--no-add-existing", action="store_true",
                    help="register without KE_PROCESSOR_CHANGE_ADD_EXISTING (no replay)")
    r = p.add_argument_group("run")
    r.add_argument("--libvirt-uri", help=f"default: {default_uri()}")
    r.add_argument("--run-dir", type=Path, help="artifacts directory (default ./runs/TIME-NAME)")
    r.add_argument("--cold", action="store_true",
                   help="boot the guest instead of restoring a saved one (and save nothing)")
    r.add_argument("--keep-on-failure", action="store_true",
                   help="leave the guest running when the run fails")
    r.add_argument("--ready-timeout", type=float, default=120.0)
    r.add_argument("--ack-timeout", type=float, default=60.0)
    r.add_argument("--json", action="store_true", help="print result.json to stdout")
    r.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run_command)


def spec_from_args(args: argparse.Namespace) -> ScenarioSpec:
    topology = Topology(args.sockets, args.dies, args.cores, args.threads)
    if args.max_vcpus is not None and args.max_vcpus != topology.total:
        raise InputError(f"--max-vcpus {args.max_vcpus} != topology {topology} = "
                         f"{topology.total}", "make sockets*dies*cores*threads equal max vCPUs")
    return ScenarioSpec(
        guest=GuestChoice(args.guest), topology=topology, boot_vcpus=args.boot_vcpus,
        adds=len(args.vcpu_ids) if args.vcpu_ids else args.adds, vcpu_ids=args.vcpu_ids,
        method=HotplugMethod(args.method),
        probe=ProbeSettings(add_existing=not args.no_add_existing, veto_index=args.veto_cpu,
                            veto_status=args.veto_status),
        add_after_unload=args.add_after_unload, accelerator=Accelerator(args.accel),
        firmware=Firmware(args.firmware) if args.firmware else None, memory_mib=args.memory,
        libvirt_uri=args.libvirt_uri, run_dir=args.run_dir,
        keep_on_failure=args.keep_on_failure, cold=args.cold, ready_timeout=args.ready_timeout,
        ack_timeout=args.ack_timeout, image=args.image, driver=args.driver)


def run_command(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    result = run_scenario(spec, Progress(quiet=args.quiet))
    try:
        report = f"report: {write_report(result.run_dir)}"
    except HotaddError as exc:  # the run's outcome stands; only the page is missing
        report = f"report: not written: {exc}"
    if args.json:
        json.dump(result.to_dict(), sys.stdout, indent=2)
        print()
        print(report, file=sys.stderr)
    else:
        print(render_result(result))
        print(report)
    return int(result.exit_code)

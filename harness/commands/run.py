"""`hotadd run`: the scenario from the command line, with a readable timeline and verdict."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from harness.developer import parse_param
from harness.errors import HotaddError, InputError, Outcome, exit_code
from harness.guests import registry
from harness.guests.base import (
    STATUS_INSUFFICIENT_RESOURCES,
    DriverOrder,
    DriverPackage,
    GuestKind,
    ProbeSettings,
)
from harness.host.connection import default_uri
from harness.host.domain import Accelerator, Firmware, Topology
from harness.host.machine import HotplugMethod
from harness.progress import Progress
from harness.records import UINT32_MAX
from harness.report.html import write_report
from harness.report.text import render_result
from harness.scenario import planned_xml, run_scenario
from harness.spec import NTSTATUS_ERROR_MIN, ScenarioSpec

DEFAULT_ADDS = 2


def _int_list(text: str) -> tuple[int, ...]:
    """"3,1" -> (3, 1). An empty list or item is refused: it would silently mean "no ids"."""
    parts = [x.strip() for x in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of vCPU ids (e.g. 3,2); leave --vcpu-ids "
            "out to add the next free vCPUs")
    try:
        return tuple(int(x) for x in parts)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of ids") from exc


def _status(text: str) -> int:
    """An NTSTATUS error code, checked here so a bad one never costs a boot."""
    try:
        value = int(text, 0)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an NTSTATUS (e.g. 0xC000009A)") from exc
    if not NTSTATUS_ERROR_MIN <= value <= UINT32_MAX:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an NTSTATUS error code: a veto status is a 32-bit value "
            "0x80000000..0xFFFFFFFF (NT_SUCCESS is false), e.g. 0xC000009A")
    return value


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
        return value
    return parse


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "run", help="boot a guest, hot-add vCPUs, collect the probe's records, give a verdict",
        description="Run one hot-add scenario. Exit 0 pass, 1 verdict fail (or guest crash), "
                    "2 harness/infrastructure error.")
    add_arguments(p)
    p.set_defaults(func=run_command)


#: The argument groups of `add_arguments`; `harness.matrix` reads a matrix file's guest tables
#: and scenarios against them, so a scenario option means exactly what the flag means.
GUEST_GROUP, VCPU_GROUP, PROBE_GROUP, RUN_GROUP = "guest", "vCPUs", "probe", "run"
OWN_DRIVER_GROUP = "your driver beside the probe"
#: The options that are guest kinds' own settings (`GuestKind.settings_type` fields, by name).
SETTINGS_OPTIONS = ("image", "driver")
#: --with-WORD, the word of each guest kind's `own_driver`: what it loads, an example param.
OWN_DRIVER_FLAGS = {"module": ("kernel module (.ko) for the reference guest", "size_by=online"),
                    "driver": ("Windows driver (.sys); not yet run on Windows", "Size=4")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Every option of one scenario (also what a matrix file's scenarios may set)."""
    g = p.add_argument_group(GUEST_GROUP)
    g.add_argument("--guest", choices=registry.names(), default=registry.DEFAULT)
    g.add_argument("--image", type=Path, help="Windows golden image (hotadd image build)")
    g.add_argument("--driver", type=Path, help="Windows probe driver .sys (default: from image)")
    g.add_argument("--memory", type=_positive(int), metavar="MIB", help="guest memory")
    g.add_argument("--firmware", choices=[f.value for f in Firmware])
    g.add_argument("--accel", choices=[a.value for a in Accelerator], default="auto")
    t = p.add_argument_group(VCPU_GROUP)
    t.add_argument("--sockets", type=int, default=1)
    t.add_argument("--dies", type=int, default=1)
    t.add_argument("--cores", type=int, default=4)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--boot-vcpus", type=int, default=2)
    t.add_argument("--max-vcpus", type=int,
                   help="must equal sockets*dies*cores*threads (checked)")
    t.add_argument("--adds", type=int, default=None,
                   help=f"vCPUs to hot-add, one at a time (default {DEFAULT_ADDS}, or one per "
                        "--vcpu-ids id)")
    t.add_argument("--vcpu-ids", type=_int_list, default=(), metavar="ID,ID",
                   help="libvirt vCPU ids to add, in order (default: the next free one)")
    t.add_argument("--method", choices=[m.value for m in HotplugMethod], default="setVcpu")
    t.add_argument("--add-after-unload", action="store_true",
                   help="after unloading the probe, add one more vCPU and expect no record")
    t.add_argument("--load-during-adds", action="store_true",
                   help="plug every add first, then load the probe (and --with-module/"
                        "--with-driver ordered before it) while they are in flight: each add "
                        "is judged in the replay or as a hot-add, exactly once")
    pr = p.add_argument_group(PROBE_GROUP)
    pr.add_argument("--veto-cpu", type=int, metavar="INDEX",
                    help="processor index whose Start the probe vetoes (an online one: replay)")
    pr.add_argument("--veto-status", type=_status, default=None,
                    help="NTSTATUS of the veto (default 0xC000009A); needs --veto-cpu")
    pr.add_argument("--no-add-existing", action="store_true",
                    help="register without KE_PROCESSOR_CHANGE_ADD_EXISTING (no replay)")
    d = p.add_argument_group(OWN_DRIVER_GROUP)
    for flag, (what, example) in OWN_DRIVER_FLAGS.items():
        d.add_argument(f"--with-{flag}", type=Path, metavar="PATH",
                       help=f"your {what}: loaded beside the probe, checked after every add, "
                            "its records (if it writes them) judged too")
        d.add_argument(f"--with-{flag}-param", action="append", default=[],
                       metavar="NAME=VALUE", help=f"a parameter of it (repeatable), e.g. {example}")
        d.add_argument(f"--with-{flag}-order", choices=[o.value for o in DriverOrder],
                       default=None, help="load it before or after the probe (default after)")
    r = p.add_argument_group(RUN_GROUP)
    r.add_argument("--libvirt-uri", help=f"default: {default_uri()}")
    r.add_argument("--run-dir", type=Path, help="artifacts directory (default ./runs/TIME-NAME)")
    r.add_argument("--cold", action="store_true",
                   help="boot the guest instead of restoring a saved one (and save nothing)")
    r.add_argument("--keep-on-failure", action="store_true",
                   help="leave the guest running when the run fails")
    r.add_argument("--ready-timeout", type=_positive(float), default=120.0)
    r.add_argument("--ack-timeout", type=_positive(float), default=60.0)
    r.add_argument("--json", action="store_true", help="print result.json to stdout")
    r.add_argument("--quiet", action="store_true", help="no progress lines")
    r.add_argument("--print-xml", action="store_true",
                   help="print the domain XML the run would define and stop: nothing is "
                        "started, and the image and driver need not exist")


def own_driver_from_args(args: argparse.Namespace,
                         kind: type[GuestKind]) -> DriverPackage | None:
    """--with-module / --with-driver and their -param / -order options, each checked to fit
    the guest (`harness.developer.check_package` checks the file itself)."""
    given = {f: getattr(args, f"with_{f}") for f in OWN_DRIVER_FLAGS}
    extras = {f: bool(getattr(args, f"with_{f}_param") or getattr(args, f"with_{f}_order"))
              for f in given}
    wanted = kind.own_driver.word
    other = next((f for f in given if f != wanted and (given[f] is not None or extras[f])),
                 None)
    if other is not None:
        owners = " or ".join(k.name for k in registry.kinds() if k.own_driver.word == other)
        raise InputError(f"--with-{other} is for --guest {owners}; this run's guest is "
                         f"{kind.name}",
                         f"use --with-{wanted} on the {kind.name} guest, or change --guest")
    if given[wanted] is None:
        if extras[wanted]:
            raise InputError(f"--with-{wanted}-param/-order given without --with-{wanted}",
                             f"add --with-{wanted} PATH, or leave them out")
        return None
    option = f"--with-{wanted}-param"
    params = tuple(parse_param(t, option) for t in getattr(args, f"with_{wanted}_param"))
    order = getattr(args, f"with_{wanted}_order")
    return DriverPackage(path=given[wanted], params=params,
                         order=DriverOrder(order) if order else DriverOrder.AFTER)


def spec_from_args(args: argparse.Namespace) -> ScenarioSpec:
    topology = Topology(args.sockets, args.dies, args.cores, args.threads)
    if args.max_vcpus is not None and args.max_vcpus != topology.total:
        raise InputError(f"--max-vcpus {args.max_vcpus} != topology {topology} = "
                         f"{topology.total}", "make sockets*dies*cores*threads equal max vCPUs")
    if args.veto_status is not None and args.veto_cpu is None:
        raise InputError("--veto-status was given without --veto-cpu: nothing would be vetoed",
                         "add --veto-cpu INDEX, or leave --veto-status out")
    if args.adds is None:
        adds = len(args.vcpu_ids) if args.vcpu_ids else DEFAULT_ADDS
    else:
        adds = args.adds  # with --vcpu-ids too: ScenarioSpec refuses a count that differs
    kind = registry.get(args.guest)
    spec = ScenarioSpec(
        guest=kind.name, topology=topology, boot_vcpus=args.boot_vcpus,
        adds=adds, vcpu_ids=args.vcpu_ids,
        method=HotplugMethod(args.method),
        probe=ProbeSettings(
            add_existing=not args.no_add_existing, veto_index=args.veto_cpu,
            veto_status=(STATUS_INSUFFICIENT_RESOURCES if args.veto_status is None
                         else args.veto_status)),
        add_after_unload=args.add_after_unload, load_during_adds=args.load_during_adds,
        accelerator=Accelerator(args.accel),
        firmware=Firmware(args.firmware) if args.firmware else None, memory_mib=args.memory,
        libvirt_uri=args.libvirt_uri, run_dir=args.run_dir,
        keep_on_failure=args.keep_on_failure, cold=args.cold, ready_timeout=args.ready_timeout,
        ack_timeout=args.ack_timeout, own_driver=own_driver_from_args(args, kind),
        guest_settings=registry.settings_from_options(
            kind, {name: getattr(args, name) for name in SETTINGS_OPTIONS}))
    spec.check_veto_reached()
    return spec


def run_command(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    if args.print_xml:
        print(planned_xml(spec))
        return exit_code(Outcome.PASS)
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

"""`hotadd guest build`: build (or find in the cache) the reference guest."""

from __future__ import annotations

import argparse

from harness.errors import Outcome, exit_code
from harness.progress import Progress


def _build(args: argparse.Namespace) -> int:
    from harness.guests import reference

    progress = Progress()
    image = reference.build(force=args.force, progress=progress)
    print(f"reference guest: {image.build_dir} (kernel {image.kernel_version})")
    print(f"example developer module: {reference.example_module(image)}")
    return exit_code(Outcome.PASS)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    guest = subparsers.add_parser("guest", help="build the reference guest")
    actions = guest.add_subparsers(dest="guest_command", metavar="ACTION", required=True)
    build = actions.add_parser(
        "build",
        help="build the reference guest into the per-user cache (cached by its inputs)",
    )
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.set_defaults(func=_build)

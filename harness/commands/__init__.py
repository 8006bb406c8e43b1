"""The `hotadd` subcommands, one module each (`hotadd X` is `harness.commands.X`).

Each module exposes `add_parser(subparsers) -> None`, which sets `func=callable(args) -> int`
on its parser, and holds only argument parsing and printing: the work is done by the layer the
command drives (`harness.scenario`, `harness.oracle`, `harness.guests`, ...).
"""

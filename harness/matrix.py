"""A scenario matrix: one TOML file listing hosts, guests and named groups of scenarios.

```toml
name = "smoke"
[defaults]                      # hotadd run options every scenario starts from
accel = "tcg"
[hosts.local]                   # where scenarios run, and what they may use there at once
uri = "qemu:///embed"           # each worker gets its own embedded root
vcpus = 6
memory = 2048                   # MiB
[guests.reference]              # hotadd run's guest options (guest, image, driver, memory...)
guest = "reference"
[groups.replay]                 # a named group: its options apply to its scenarios
cores = 4
[[groups.replay.scenario]]
name = "veto"
veto-cpu = [0, 1]               # a list expands: one scenario per value (a cross product)
```

Scenario keys are `hotadd run`'s long options without the dashes, with the values one would
write on its command line (`no-add-existing = true`, `vcpu-ids = "3,2"`); they go through that
command's own parser and `spec_from_args`, so a scenario here means exactly what the same flags
mean there. Every scenario x host x guest becomes one case; the whole file is checked (each case
builds a ScenarioSpec, fits its host's capacity) before anything runs. Relative image and driver
paths are relative to the file.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from harness.commands.run import GUEST_GROUP, add_arguments, spec_from_args
from harness.errors import InputError
from harness.host.capacity import Capacity
from harness.host.remote import check_run
from harness.host.target import check_remote_uri, is_remote_uri
from harness.spec import ScenarioSpec, guest_kind

LOCAL_EMBED = "qemu:///embed"
#: run options a scenario may not set, because the matrix decides them, and what does instead
MANAGED = {
    "libvirt-uri": "a host's uri in [hosts.NAME] (each worker gets its own libvirt root)",
    "run-dir": "hotadd matrix --artifacts DIR (each case gets DIR/<case>)",
    "json": "the matrix's JUnit XML and matrix.json",
    "quiet": "pytest's -v (progress lines show at -v)",
    "print-xml": "hotadd run --print-xml with the case's options (a matrix runs its cases)",
}
TOP_KEYS = ("name", "description", "defaults", "hosts", "guests", "groups")
HOST_KEYS = ("uri", "vcpus", "memory", "description")
SELECTORS = ("hosts", "guests")
GROUP_KEYS = ("description", "scenario", *SELECTORS)
SCENARIO_KEYS = ("name", "description", *SELECTORS)


class _Parser(argparse.ArgumentParser):
    """`hotadd run`'s options, raising instead of exiting on bad input."""

    def error(self, message: str) -> NoReturn:
        raise InputError(message)


def _run_options() -> tuple[_Parser, dict[str, argparse.Action], frozenset[str]]:
    parser = _Parser(prog="hotadd run", add_help=False)
    add_arguments(parser)
    options = {a.option_strings[0][2:]: a for a in parser._actions if a.option_strings}
    guest = frozenset(a.option_strings[0][2:] for g in parser._action_groups
                      if g.title == GUEST_GROUP for a in g._group_actions)
    return parser, options, guest


_PARSER, OPTIONS, GUEST_OPTIONS = _run_options()
SCENARIO_OPTIONS = frozenset(OPTIONS) - frozenset(MANAGED)


@dataclass(frozen=True)
class MatrixHost:
    """A libvirt host of the matrix and its capacity (what its guests may use at once)."""

    name: str
    uri: str
    capacity: Capacity
    description: str = ""

    @property
    def embedded(self) -> bool:
        """Each worker runs its own embedded libvirt (else all share the host's daemon)."""
        return self.uri == LOCAL_EMBED

    @property
    def gate_key(self) -> str:
        """Which capacity gate: one per machine, whatever a file calls it; a remote host's
        URI (its gate is on that host, shared by every controller, `harness.host.capacity`)."""
        return self.uri if is_remote_uri(self.uri) else "local"


@dataclass(frozen=True)
class MatrixCase:
    """One scenario on one host with one guest: a test of the matrix."""

    group: str
    scenario: str  # its name in the file
    values: str  # the expanded values that made this case: "veto-cpu=0,adds=2" (or "")
    host: MatrixHost
    guest: str  # the [guests.NAME] it runs
    spec: ScenarioSpec  # libvirt_uri and run_dir are set where it runs
    need: Capacity

    @property
    def params(self) -> str:
        return f"[{self.values}]" if self.values else ""

    @property
    def row(self) -> str:
        return f"{self.group}/{self.scenario}{self.params}"

    @property
    def column(self) -> str:
        return f"{self.host.name}/{self.guest}"

    @property
    def case_id(self) -> str:
        """The test's id; reads like a URI: group/scenario@host/guest[values] (pytest and
        JUnit take a trailing [...] as the parameters)."""
        return f"{self.group}/{self.scenario}@{self.column}{self.params}"

    @property
    def dir_name(self) -> str:
        """The case's run directory under the artifacts directory."""
        return re.sub(r"[^A-Za-z0-9_.=,@-]+", "-", self.case_id).strip("-")


@dataclass(frozen=True)
class Matrix:
    path: Path
    name: str
    description: str
    hosts: tuple[MatrixHost, ...]
    guests: tuple[str, ...]
    cases: tuple[MatrixCase, ...]


def _fail(where: str, problem: str, fix: str) -> NoReturn:
    raise InputError(f"{where}: {problem}", fix)


def _table(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(where, f"must be a table, not {type(value).__name__}",
              "see the format in examples/smoke.toml")
    return value


def _check_keys(table: Mapping[str, object], allowed: Sequence[str] | frozenset[str],
                where: str) -> None:
    for key in table:
        if key in allowed:
            continue
        if key in MANAGED:
            _fail(where, f"'{key}' is set by the matrix, not by a scenario",
                  f"remove it; it comes from {MANAGED[key]}")
        close = difflib.get_close_matches(key, sorted(allowed), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        _fail(where, f"unknown key '{key}'",
              f"{hint}allowed here: {', '.join(sorted(allowed))}")


def _names(value: object, known: Sequence[str], what: str, where: str) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not names:
        _fail(where, f"'{what}' must be a name or a list of names", f"e.g. {what} = [...]")
    for n in names:
        if n not in known:
            _fail(where, f"unknown {what[:-1]} '{n}'", f"use one of: {', '.join(known)}")
    return tuple(names)


def check_host_uri(name: str, uri: str) -> None:
    """Accept the local libvirt URIs and remote hosts over qemu+ssh:// (a host's system
    libvirtd; `harness.host.target`)."""
    where = f"[hosts.{name}]"
    parts = urlsplit(uri)
    if is_remote_uri(uri):
        try:
            check_remote_uri(uri)
        except InputError as exc:
            _fail(where, exc.problem, exc.fix or "")
        return
    if parts.scheme not in ("qemu", "qemu+unix"):
        _fail(where, f"{uri} is not a QEMU libvirt URI", f'use "{LOCAL_EMBED}" or '
              '"qemu:///system"')
    if parts.path == "/embed" and uri != LOCAL_EMBED:
        _fail(where, f"{uri} names an embedded root; a matrix gives each worker its own root "
              "(libvirt allows one process per root)", f'write uri = "{LOCAL_EMBED}"')
    if parts.path not in ("/embed", "/system", "/session"):
        _fail(where, f"{uri} is not a local QEMU driver URI",
              f'use "{LOCAL_EMBED}", "qemu:///system" or "qemu:///session"')


def this_machine() -> Capacity:
    """The local machine's own size, for a matrix that declares no host."""
    memory_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    return Capacity(vcpus=os.cpu_count() or 1, memory_mib=memory_kib // 1024)


def _int(table: Mapping[str, object], key: str, where: str) -> int:
    value = table.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(where, f"'{key}' must be an integer", f"e.g. {key} = 4")
    return value


def _hosts(raw: object) -> tuple[MatrixHost, ...]:
    if raw is None:
        return (MatrixHost("local", LOCAL_EMBED, this_machine(), "this machine"),)
    hosts = []
    for name, table in _table(raw, "[hosts]").items():
        where = f"[hosts.{name}]"
        table = _table(table, where)
        _check_keys(table, HOST_KEYS, where)
        uri = table.get("uri", LOCAL_EMBED)
        if not isinstance(uri, str):
            _fail(where, "'uri' must be a string", f'e.g. uri = "{LOCAL_EMBED}"')
        check_host_uri(name, uri)
        try:
            capacity = Capacity(_int(table, "vcpus", where), _int(table, "memory", where))
        except InputError as exc:
            _fail(where, exc.problem, exc.fix or "")
        hosts.append(MatrixHost(name, uri, capacity, str(table.get("description", ""))))
    return tuple(hosts)


def select_hosts(hosts: tuple[MatrixHost, ...], wanted: Sequence[str]) -> tuple[MatrixHost, ...]:
    """The hosts named (by name or URI) with --host; all of them when none is named."""
    if not wanted:
        return hosts
    chosen = []
    for w in wanted:
        match = [h for h in hosts if w in (h.name, h.uri)]
        if not match:
            if urlsplit(w).scheme:
                check_host_uri(w, w)  # a remote URI: say so before "not in the file"
            _fail(f"--host {w}", "no such host in the matrix file",
                  f"use one of: {', '.join(f'{h.name} ({h.uri})' for h in hosts)}")
        chosen += [h for h in match if h not in chosen]
    return tuple(chosen)


def _expand(options: Mapping[str, object]) -> list[tuple[str, dict[str, object]]]:
    """The cross product of the list-valued options: ("key=value,..." chosen, options)."""
    keys = [k for k, v in options.items() if isinstance(v, list)]
    combos = []
    for values in itertools.product(*(options[k] for k in keys)):  # type: ignore[call-overload]
        chosen = dict(options) | dict(zip(keys, values, strict=True))
        combos.append((",".join(f"{k}={v}" for k, v in zip(keys, values, strict=True)), chosen))
    return combos


def _argv(options: Mapping[str, object], base: Path, where: str) -> list[str]:
    argv = []
    for key, value in options.items():
        action = OPTIONS[key]
        flag = action.option_strings[0]
        if action.nargs == 0:
            if not isinstance(value, bool):
                _fail(where, f"'{key}' is a flag", f"write {key} = true (or false)")
            if value:
                argv.append(flag)
            continue
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            _fail(where, f"'{key}' = {value!r} is not a value for {flag}",
                  f"give what 'hotadd run {flag} VALUE' takes (a list only to expand)")
        if action.type is Path and not Path(str(value)).expanduser().is_absolute():
            value = base / str(value)
        argv += [flag, str(value)]
    return argv


def build_spec(options: Mapping[str, object], base: Path, where: str) -> ScenarioSpec:
    """The ScenarioSpec `hotadd run` would build from these options as flags."""
    try:
        return spec_from_args(_PARSER.parse_args(_argv(options, base, where)))
    except InputError as exc:
        if exc.problem.startswith(where):
            raise
        _fail(where, exc.problem, exc.fix or "fix this scenario's options (see hotadd run "
              "--help)")


def needs(spec: ScenarioSpec) -> Capacity:
    """What a run uses of its host at most: vCPUs online (QEMU runs a thread per online vCPU;
    a free hot-plug slot costs nothing) and guest memory."""
    vcpus = spec.boot_vcpus + spec.adds + (1 if spec.add_after_unload else 0)
    return Capacity(vcpus, spec.memory_mib or guest_kind(spec).default_memory_mib)


def _case(group: str, scenario: str, values: str, host: MatrixHost, guest: str,
          options: Mapping[str, object], base: Path, where: str) -> MatrixCase:
    spec = build_spec(options, base, where)
    try:
        check_run(host.uri)  # what a remote host cannot run yet, before any run
    except InputError as exc:
        _fail(where, exc.problem, exc.fix or "")
    need = needs(spec)
    if not host.capacity.fits(need):
        _fail(where, f"needs {need.vcpus} vCPUs and {need.memory_mib} MiB but host "
              f"{host.name} offers {host.capacity.vcpus} vCPUs and "
              f"{host.capacity.memory_mib} MiB",
              "lower the scenario's boot vCPUs/adds/memory or raise "
              f"[hosts.{host.name}] vcpus/memory")
    return MatrixCase(group, scenario, values, host, guest, spec, need)


def _group_cases(gname: str, raw_group: object, defaults: Mapping[str, object],
                 guests: Mapping[str, Mapping[str, object]], all_hosts: Sequence[MatrixHost],
                 hosts: Sequence[MatrixHost], base: Path) -> list[MatrixCase]:
    """The cases of one [groups.NAME]: each scenario x its values x hosts x guests."""
    gwhere = f"[groups.{gname}]"
    group = dict(_table(raw_group, gwhere))
    scenarios = group.pop("scenario", None)
    group.pop("description", None)
    selectors = {k: group.pop(k) for k in SELECTORS if k in group}
    _check_keys(group, SCENARIO_OPTIONS | set(GROUP_KEYS), gwhere)
    if not isinstance(scenarios, list) or not scenarios:
        _fail(gwhere, "has no scenarios", f"add [[groups.{gname}.scenario]] tables")
    cases = []
    seen: set[str] = set()
    for i, raw in enumerate(scenarios):
        scenario = dict(_table(raw, f"{gwhere} scenario {i + 1}"))
        sname = scenario.pop("name", f"s{i + 1}")
        swhere = f"{gwhere} scenario '{sname}'"
        if not isinstance(sname, str) or sname in seen or not sname:
            _fail(swhere, "needs a unique, non-empty name", 'add name = "..."')
        seen.add(sname)
        scenario.pop("description", None)
        sel = selectors | {k: scenario.pop(k) for k in SELECTORS if k in scenario}
        _check_keys(scenario, SCENARIO_OPTIONS | set(SCENARIO_KEYS), swhere)
        on_hosts = _names(sel.get("hosts", [h.name for h in all_hosts]),
                          [h.name for h in all_hosts], "hosts", swhere)
        on_guests = _names(sel.get("guests", list(guests)), list(guests), "guests", swhere)
        for key, value in (dict(defaults) | group | scenario).items():
            if isinstance(value, list) and not value:
                _fail(swhere, f"'{key}' is an empty list", "give at least one value")
        for guest in on_guests:  # a guest's table overrides [defaults], a scenario both
            for label, options in _expand(dict(defaults) | dict(guests[guest]) | group
                                          | scenario):
                for host in (h for h in hosts if h.name in on_hosts):
                    cases.append(_case(gname, sname, label, host, guest, options, base,
                                       f"{swhere}{label and f'[{label}]'} on "
                                       f"{host.name}/{guest}"))
    return cases


def load_matrix(path: Path, host_filter: Sequence[str] = ()) -> Matrix:
    """Read and check the whole file; every case it lists, or an InputError naming the
    place and the fix."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"cannot read the matrix file {path}: {exc.strerror}",
                         "give the path of a .toml matrix file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path} is not valid TOML: {exc}", "fix the syntax") from exc
    where = str(path)
    _check_keys(data, TOP_KEYS, where)
    base = path.resolve().parent
    defaults = _table(data.get("defaults", {}), "[defaults]")
    _check_keys(defaults, SCENARIO_OPTIONS, "[defaults]")
    all_hosts = _hosts(data.get("hosts"))
    hosts = select_hosts(all_hosts, host_filter)
    guests: dict[str, dict[str, Any]] = {}
    for name, table in _table(data.get("guests", {"reference": {}}), "[guests]").items():
        guests[name] = dict(_table(table, f"[guests.{name}]"))
        guests[name].pop("description", None)
        _check_keys(guests[name], GUEST_OPTIONS, f"[guests.{name}]")
        if any(isinstance(v, list) for v in guests[name].values()):
            _fail(f"[guests.{name}]", "a guest's options are single values",
                  "list variants as separate [guests.NAME] tables")
    groups = _table(data.get("groups"), "[groups]") if "groups" in data else {}
    if not groups:
        _fail(where, "no [groups.NAME] with scenarios", "add a group of [[groups.NAME.scenario]]")
    cases = [case for gname, group in groups.items()
             for case in _group_cases(gname, group, defaults, guests, all_hosts, hosts, base)]
    by_dir: dict[str, MatrixCase] = {}
    for case in cases:  # a name is a test id and a run directory: each must be one case's
        if (other := by_dir.setdefault(case.dir_name, case)) is not case:
            _fail(where, f"cases {other.case_id} and {case.case_id} would share a name (and "
                  "a run directory)", "list each value once, and give groups and scenarios names "
                  "that differ by more than punctuation")
    if not cases:
        _fail(where, "no case runs on the selected hosts",
              "select hosts the scenarios name (--host), or drop their 'hosts' lists")
    name = data.get("name", path.stem)
    return Matrix(path, str(name), str(data.get("description", "")), hosts, tuple(guests),
                  tuple(cases))

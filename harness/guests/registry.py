"""The guest kinds a run can name (`--guest`, a matrix's `guest =`, `--hotadd-guest`,
`ScenarioSpec.guest`): one table from name to `GuestKind` class, looked up with `get(name)`.

A name maps to where its class lives, imported on first use (as pytest-testinfra's backend
registry maps a connection type to its backend class): a reference run never imports the
Windows kind and its WinRM stack, and `hotadd --help` imports neither. Everything else
about a kind is declared on its class (`harness.guests.base.GuestKind`): its `name`, oracle
`oracle_profile`, `settings_type` (its own options, checked here), the `own_driver` file it
takes (`--with-module` .ko, `--with-driver` .sys), its `transport`, the hardware flavour `os`
of its domain, and `from_settings`, which builds it for a run.

Adding a guest kind is one module and one line here. A FreeBSD guest, say:

    # harness/guests/freebsd_kind.py
    @dataclass(frozen=True)
    class FreeBsdSettings(GuestSettings):
        image: Path | None = None  # --image, which `hotadd run` already offers

    class FreeBsdKind(GuestKind):
        name = "freebsd"
        os = GuestOS.REFERENCE  # virtio hardware, no Hyper-V enlightenments
        oracle_profile = OracleProfile.LINUX
        settings_type = FreeBsdSettings
        origin = "boots an image you give (--image)"
        own_driver = DriverOption("module", ".ko")
        transport = SshTransport
        ...  # prepare, domain_spec, open_session, from_settings

    # and in KINDS below:
    "freebsd": "harness.guests.freebsd_kind:FreeBsdKind",

`--guest freebsd` then works in `hotadd run`, matrix files and the pytest plugin. A setting
no kind had before also needs its flag beside `--image` in `harness/commands/run.py` (every
`hotadd run` option is declared there, so building the parser imports no guest kind; a
unit test checks each kind's settings have their flag).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping

from harness.errors import InputError
from harness.guests.base import GuestKind, GuestSettings

#: name -> "module:class" of every guest kind, the first the default.
KINDS: dict[str, str] = {
    "reference": "harness.guests.reference_kind:ReferenceKind",
    "windows": "harness.guests.windows_kind:WindowsKind",
}
DEFAULT = "reference"


def names() -> tuple[str, ...]:
    """Every guest kind's name (`--guest`'s choices), without importing any."""
    return tuple(KINDS)


def get(name: str) -> type[GuestKind]:
    """The guest kind called `name`; an InputError listing the known kinds otherwise."""
    where = KINDS.get(name)
    if where is None:
        raise InputError(f"unknown guest kind {name!r}",
                         f"use one of: {', '.join(KINDS)} (--guest NAME)")
    module, _, attr = where.partition(":")
    kind = getattr(importlib.import_module(module), attr)
    if not (isinstance(kind, type) and issubclass(kind, GuestKind) and kind.name == name):
        raise TypeError(f"guest kind registry: {where} is not the GuestKind named {name!r}")
    return kind


def kinds() -> tuple[type[GuestKind], ...]:
    """Every guest kind (imports them all: for error messages naming the other kinds)."""
    return tuple(get(name) for name in KINDS)


def _fields(kind: type[GuestKind]) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(kind.settings_type))


def settings_from_options(kind: type[GuestKind],
                          options: Mapping[str, object]) -> GuestSettings:
    """`kind`'s settings from `hotadd run` options by name (`{"image": Path(...)}`; None is
    not given). An option only other kinds take is refused, naming them."""
    foreign = [name for name, value in options.items()
               if value is not None and name not in _fields(kind)]
    if foreign:
        flags = " and ".join(f"--{name.replace('_', '-')}" for name in foreign)
        owners = [k.name for k in kinds() if set(foreign) <= set(_fields(k))]
        verb = "is" if len(foreign) == 1 else "are"
        owned = f"for --guest {' or '.join(owners)} only" if owners else "for no guest kind"
        raise InputError(f"{flags} {verb} {owned}; the {kind.name} guest {kind.origin}",
                         f"add --guest {owners[0]}, or leave {flags} out" if owners
                         else f"leave {flags} out")
    return kind.settings_type(**{k: v for k, v in options.items() if v is not None})


def settings_for(kind: type[GuestKind], settings: GuestSettings) -> GuestSettings:
    """`settings` as `kind`'s (the bare GuestSettings(): its defaults). Another kind's
    settings are refused as their options would be, unless they hold only defaults."""
    if type(settings) is kind.settings_type:
        return settings
    return settings_from_options(kind, {f.name: getattr(settings, f.name)
                                        for f in dataclasses.fields(settings)
                                        if getattr(settings, f.name) != f.default})

"""The guest kind registry (harness.guests.registry): names to kinds, each kind's declarations,
its settings checked with the problem and the fix, and a third kind added by one class and
one registry line."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from harness import paths
from harness.cli import build_parser
from harness.commands.run import (
    OWN_DRIVER_FLAGS,
    SETTINGS_OPTIONS,
    add_arguments,
    spec_from_args,
)
from harness.errors import InputError
from harness.guests import registry
from harness.guests.base import DriverOption, GuestSettings, ProbeSettings
from harness.guests.reference_kind import ReferenceKind
from harness.guests.windows_kind import WindowsKind, WindowsSettings
from harness.host.domain import GuestOS
from harness.oracle import Profile
from harness.spec import ScenarioSpec, guest_kind, spec_dict
from harness.transport.base import Transport
from harness.transport.ssh import SshTransport
from harness.transport.winrm import WinRMTransport


def test_each_name_finds_its_kind_and_what_it_declares() -> None:
    assert registry.names() == ("reference", "windows") and registry.DEFAULT == "reference"
    assert registry.get("reference") is ReferenceKind and registry.get("windows") is WindowsKind
    declared = {k.name: (k.os, k.oracle_profile, k.settings_type, k.own_driver, k.transport)
                for k in registry.kinds()}
    assert declared == {
        "reference": (GuestOS.REFERENCE, Profile.LINUX, GuestSettings,
                      DriverOption("module", ".ko"), SshTransport),
        "windows": (GuestOS.WINDOWS, Profile.WINDOWS, WindowsSettings,
                    DriverOption("driver", ".sys"), WinRMTransport)}


def test_every_kind_setting_and_driver_option_is_a_run_option() -> None:
    """A kind's settings are `hotadd run` options of the same name, and its --with-WORD is
    one of run's: what the CLI, a matrix file and the plugin hand to the registry."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    dests = {a.dest for a in parser._actions}
    for kind in registry.kinds():
        fields = {f.name for f in dataclasses.fields(kind.settings_type)}
        assert fields <= set(SETTINGS_OPTIONS) <= dests, kind.name
        assert kind.own_driver.word in OWN_DRIVER_FLAGS
        assert {f"with_{kind.own_driver.word}"} <= dests
        assert issubclass(kind.transport, Transport)


def test_an_unknown_name_is_refused_with_the_known_kinds() -> None:
    with pytest.raises(InputError, match="unknown guest kind 'freebsd'") as err:
        registry.get("freebsd")
    assert err.value.fix == "use one of: reference, windows (--guest NAME)"
    with pytest.raises(InputError, match="use one of: reference, windows"):
        ScenarioSpec(guest="Windows")


@pytest.mark.parametrize(("options", "problem", "fix"), [
    ({"image": Path("/w.qcow2")},
     "--image is for --guest windows only; the reference guest is built by hotadd",
     "add --guest windows, or leave --image out"),
    ({"image": Path("/w.qcow2"), "driver": Path("/p.sys")},
     "--image and --driver are for --guest windows only; the reference guest is built by "
     "hotadd", "add --guest windows, or leave --image and --driver out"),
    ({"memory_size": 3}, "--memory-size is for no guest kind; the reference guest is built by "
     "hotadd", "leave --memory-size out"),
])
def test_reference_settings_refuse_windows_options(options: dict[str, object], problem: str,
                                                   fix: str) -> None:
    with pytest.raises(InputError) as err:
        registry.settings_from_options(ReferenceKind, options)
    assert (err.value.problem, err.value.fix) == (problem, fix)


def test_a_spec_holds_its_kinds_settings_and_refuses_another_kinds() -> None:
    assert ScenarioSpec().guest_settings == GuestSettings()
    assert registry.settings_from_options(ReferenceKind, {"image": None}) == GuestSettings()
    windows = ScenarioSpec(guest="windows")
    assert windows.guest_settings == WindowsSettings()  # the bare settings: the kind's defaults
    given = WindowsSettings(image=Path("/w.qcow2"), driver=Path("/p.sys"))
    assert ScenarioSpec(guest="windows", guest_settings=given).guest_settings is given
    kind = guest_kind(ScenarioSpec(guest="windows", guest_settings=given))
    assert isinstance(kind, WindowsKind)
    assert (kind.image, kind.driver) == (Path("/w.qcow2"), Path("/p.sys"))
    assert ScenarioSpec(guest_settings=WindowsSettings()).guest_settings == GuestSettings()
    with pytest.raises(InputError, match="--driver is for --guest windows only") as err:
        ScenarioSpec(guest_settings=WindowsSettings(driver=Path("/p.sys")))
    assert err.value.fix == "add --guest windows, or leave --driver out"


def test_windows_settings_come_from_the_run_options() -> None:
    args = build_parser().parse_args(["run", "--guest", "windows", "--image", "w.qcow2"])
    spec = spec_from_args(args)
    assert spec.guest_settings == WindowsSettings(image=Path("w.qcow2"))


def test_each_kind_checks_its_probe_settings() -> None:
    odd = ProbeSettings(veto_index=3, veto_status=0xC0000001)
    with pytest.raises(InputError, match="the reference guest cannot veto with status"):
        ReferenceKind.check_probe(odd)
    WindowsKind.check_probe(odd)  # any NTSTATUS error code: the driver returns it as given
    assert ScenarioSpec(guest="windows", probe=odd).probe == odd


def test_result_json_keeps_the_settings_by_name() -> None:
    """result.json's "scenario" as before the registry: Windows' image and driver by name."""
    windows = spec_dict(ScenarioSpec(guest="windows",
                                     guest_settings=WindowsSettings(image=Path("/w.qcow2"))))
    assert (windows["guest"], windows["image"], windows["driver"]) == (
        "windows", "/w.qcow2", None)
    keys = list(windows)
    assert keys.index("ack_timeout") + 1 == keys.index("image") == keys.index("cold") - 2
    reference = spec_dict(ScenarioSpec())
    assert reference["guest"] == "reference" and "guest_settings" not in reference
    assert "image" not in reference


def test_naming_the_guests_imports_no_guest_kind() -> None:
    """`--guest`'s choices and a reference run's spec import neither the Windows kind (and its
    WinRM stack) nor, for the parser, the reference kind."""
    code = ("import sys\nfrom harness.cli import build_parser\n"
            "from harness.commands.run import spec_from_args\n"
            "args = build_parser().parse_args(['run'])\n"
            "print(sorted(m for m in sys.modules if m.endswith('_kind')))\n"
            "spec_from_args(args)\n"
            "print(sorted(m for m in sys.modules if m.endswith('_kind')))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=paths.REPO_ROOT, check=True,
                         capture_output=True, text=True).stdout.splitlines()
    assert out == ["[]", "['harness.guests.reference_kind']"]


@dataclasses.dataclass(frozen=True)
class ThirdSettings(GuestSettings):
    image: Path | None = None


class ThirdKind(ReferenceKind):
    """A third guest kind: the reference guest's hardware, probe and transport, booting an
    image it is given (a kind declares all of `GuestKind`'s; this one inherits most)."""

    name = "third"
    settings_type = ThirdSettings
    origin = "boots an image you give (--image)"

    def __init__(self, image: Path | None = None) -> None:
        super().__init__()
        self.image_file = image

    @classmethod
    def from_settings(cls, settings: GuestSettings) -> ThirdKind:
        assert isinstance(settings, ThirdSettings)
        return cls(settings.image)


def test_a_third_kind_is_one_class_and_one_registry_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.KINDS, "third", f"{__name__}:ThirdKind")
    assert registry.names()[-1] == "third" and registry.get("third") is ThirdKind
    spec = ScenarioSpec(guest="third", guest_settings=ThirdSettings(image=Path("/t.img")))
    kind = guest_kind(spec)
    assert isinstance(kind, ThirdKind) and kind.image_file == Path("/t.img")
    assert spec.kind_class.oracle_profile is Profile.LINUX
    assert spec_dict(spec)["image"] == "/t.img"
    with pytest.raises(InputError) as err:  # the options' owners now include the third kind
        registry.settings_from_options(ReferenceKind, {"image": Path("/t.img")})
    assert err.value.problem.startswith("--image is for --guest windows or third only")
    with pytest.raises(InputError, match="--driver is for --guest windows only; the third "
                                         r"guest boots an image you give \(--image\)"):
        registry.settings_from_options(ThirdKind, {"driver": Path("/p.sys")})
    monkeypatch.setitem(registry.KINDS, "fourth", f"{__name__}:ThirdKind")
    with pytest.raises(TypeError, match="is not the GuestKind named 'fourth'"):
        registry.get("fourth")

"""Bad input found deep inside (a host key line, a WinRM endpoint) is an InputError that names
the fix, so the CLI reports it as such (exit 2), never as "internal error"."""

from __future__ import annotations

import pytest

from harness.errors import InputError
from harness.transport.ssh import parse_host_key
from harness.transport.winrm import WinRMEndpoint


@pytest.mark.parametrize(("line", "says"), [
    ("", "not an OpenSSH public key line"),
    ("ssh-ed25519", "not an OpenSSH public key line"),
    ("ssh-ed25519 AAAA!!notbase64", "does not decode"),
    ("ssh-frobnicate AAAAC3NzaC1lZDI1NTE5AAAAIA==", "unsupported host key type"),
])
def test_host_key_lines(line: str, says: str) -> None:
    with pytest.raises(InputError, match=says) as err:
        parse_host_key(line)
    assert err.value.fix and "hotadd guest build --force" in err.value.fix


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"port": 0}, "out of range"),
    ({"port": 70000}, "out of range"),
    ({"port": 5985, "host": "192.0.2.7"}, "not a loopback address"),
    ({"port": 5985, "host": "winguest.lab"}, "not a loopback address"),
    ({"port": 5985, "operation_timeout": 30, "read_timeout": 30}, "must exceed"),
])
def test_winrm_endpoints(kwargs: dict[str, object], says: str) -> None:
    with pytest.raises(InputError, match=says) as err:
        WinRMEndpoint(username="Administrator", password="pw", **kwargs)  # type: ignore[arg-type]
    assert err.value.fix


def test_loopback_endpoints_are_accepted() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert WinRMEndpoint(5985, "Administrator", "pw", host=host).url.endswith("/wsman")

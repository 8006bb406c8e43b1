"""The cache's list of libvirt URIs hotadd opened (harness.host.connection)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.host import connection


def test_a_remembered_uri_is_written_once_even_when_its_root_is_gone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOTADD_CACHE_DIR", str(tmp_path))
    gone = f"qemu:///embed?root={tmp_path / 'removed'}"
    kept = f"qemu:///embed?root={tmp_path}"
    for uri in (gone, kept, gone, kept):
        connection.remember_uri(uri)
    assert (tmp_path / "libvirt-uris").read_text().splitlines() == [gone, kept]
    assert connection.known_uris() == [kept]


def test_remote_uris_are_kept_without_a_password_until_their_key_file_is_gone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run on a remote host records its URI (`hotadd sweep --all` visits it later); a URI
    whose keyfile= no longer exists can log in nowhere, so the list forgets it."""
    monkeypatch.setenv("HOTADD_CACHE_DIR", str(tmp_path))
    key = tmp_path / "key"
    key.write_text("k")
    with_key = f"qemu+ssh://root@kvm7/system?keyfile={key}"
    connection.remember_uri(with_key)
    connection.remember_uri("qemu+ssh://root:hunter2@kvm8:2222/system")
    text = (tmp_path / "libvirt-uris").read_text()
    assert "hunter2" not in text
    assert connection.known_uris() == [with_key, "qemu+ssh://root@kvm8:2222/system"]
    key.unlink()
    assert connection.known_uris() == ["qemu+ssh://root@kvm8:2222/system"]

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

"""A damaged reference-guest cache is noticed before any boot: every cached file is checked
against the sha256 its build recorded, and a truncated kernel or initramfs, a garbage
image.json or a missing file gets the build redone (and said so), never a guest that cannot
boot or a traceback. Real builds in a private cache (HOTADD_CACHE_DIR)."""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.guests import reference
from harness.progress import Progress


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache of its own, holding a fresh build (the kernel .deb copied, not downloaded)."""
    shared = reference.build().build_dir.parent
    cache = tmp_path / "cache"
    (cache / "guests" / "reference").mkdir(parents=True)
    shutil.copytree(shared / "debs", cache / "guests" / "reference" / "debs")
    monkeypatch.setenv("HOTADD_CACHE_DIR", str(cache))
    return reference.build().build_dir


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGE: dict[str, Callable[[Path], None]] = {
    "vmlinuz": truncate,
    "initrd.img": truncate,
    "image.json": lambda p: p.write_text("{garbage"),
    "id_ed25519": lambda p: p.unlink(),
    "sha256sums": lambda p: p.unlink(),
}


@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_every_kind_of_damage_is_noticed(tmp_path: Path, name: str) -> None:
    """On a copy of the shared build: what the check says for each kind of damage."""
    copy = tmp_path / "build"
    shutil.copytree(reference.build().build_dir, copy)
    assert reference._verified(copy).kernel_version  # intact: usable as it is
    DAMAGE[name](copy / name)
    with pytest.raises(reference._Damaged, match=name):
        reference._verified(copy)


def test_truncated_kernel_is_rebuilt_and_said_so(private_cache: Path) -> None:
    good = (private_cache / "vmlinuz").read_bytes()
    truncate(private_cache / "vmlinuz")
    out = io.StringIO()
    image = reference.build(progress=Progress(stream=out))
    assert (f"the cached reference guest {private_cache} is damaged (vmlinuz does not match "
            "the sha256 recorded when it was built") in out.getvalue()
    assert "rebuilding it" in out.getvalue()
    assert image.build_dir == private_cache
    assert image.kernel.read_bytes() == good  # the same kernel package, whole again
    again = io.StringIO()
    assert reference.build(progress=Progress(stream=again)) == image
    assert "damaged" not in again.getvalue()

"""A minimal writer for the kernel's initramfs format (cpio "newc", uncompressed).

Written here rather than staged on disk and packed with cpio(1) so that an unprivileged user can
put device nodes and root-owned files into the archive, and so the archive is byte-for-byte a
function of its inputs (fixed inode numbers, owners and timestamps).
"""

from __future__ import annotations

import stat

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


class CpioWriter:
    """Collects entries in order (parents before children) and returns the archive bytes."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 0
        self._dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
               nlink: int = 1) -> None:
        self._ino += 1
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(encoded), 0)
        header = _MAGIC + b"".join(b"%08X" % f for f in fields)
        self._parts += [header, encoded, _pad4(len(header) + len(encoded)), data,
                        _pad4(len(data))]

    def directory(self, name: str, perm: int = 0o755) -> None:
        self._dirs.add(name)
        self._entry(name, stat.S_IFDIR | perm, nlink=2)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def parents_and_file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        """Add a file, creating any parent directory not added yet."""
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            if parent not in self._dirs:
                self.directory(parent)
        self.file(name, data, perm)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, perm: int, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def finish(self) -> bytes:
        """The archive, with its trailer."""
        self._entry(_TRAILER, 0, nlink=1)
        return b"".join(self._parts)

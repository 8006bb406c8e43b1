"""A controller claiming one key of a remote host's saved-guest store, for tests of the store
between real processes with SSH connections of their own.

python -m tests.support.saved_claimer URI CACHE KEY
Prints "waiting" if another holds the key, then "creating <staging dir>" (it found no entry)
or "restored <image text>"; on a line on stdin it publishes what it created ("published") or
lets go ("released"), and exits. Killed, its locks end with its SSH connection.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from harness.host.saved import SavedStore
from harness.host.target import SshAddress, SshHost
from tests.support.processes import LineProcess


class ClaimerProcess(LineProcess):
    """This module run as a process (a controller claiming a key), driven by its lines."""

    def __init__(self, uri: str, cache: Path, key: str) -> None:
        super().__init__("tests.support.saved_claimer", [uri, str(cache), key])


def main(argv: list[str]) -> None:
    uri, cache, key = argv
    host = SshHost(SshAddress.of(uri), cache=Path(cache))
    try:
        store = SavedStore(target=host, limit=1 << 40)
        with store.claim(key, on_wait=lambda: print("waiting", flush=True)) as claim:
            if claim.entry is not None:
                with host.open_file(claim.entry.image, "rb") as f:
                    print(f"restored {f.read().decode()}", flush=True)
                sys.stdin.readline()
                print("released", flush=True)
                return
            staging = claim.staging()
            print(f"creating {staging.path.name}", flush=True)
            sys.stdin.readline()
            with host.open_file(staging.image, "wb") as f:
                f.write(f"made by {os.getpid()}".encode())
            host.write_text(staging.console, "ready\n")
            claim.publish({})
            print("published", flush=True)
    finally:
        host.close()


if __name__ == "__main__":
    main(sys.argv[1:])

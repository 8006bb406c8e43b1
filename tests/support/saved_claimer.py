"""A controller claiming one key of a remote host's saved-guest store, for tests of the store
between real processes with SSH connections of their own.

python -m tests.support.saved_claimer URI CACHE KEY
Prints "waiting" if another holds the key, then "creating <staging dir>" (it found no entry)
or "restored <image text>"; on a line on stdin it publishes what it created ("published") or
lets go ("released"), and exits. Killed, its locks end with its SSH connection.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from harness.host.saved import SavedStore
from harness.host.target import SshAddress, SshHost

REPO = Path(__file__).resolve().parents[2]


class ClaimerProcess:
    """This module run as a process, driven by its lines."""

    def __init__(self, uri: str, cache: Path, key: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.saved_claimer", uri, str(cache), key],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
            env=os.environ | {"PYTHONPATH": str(REPO)})

    def line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def go(self) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self.line()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


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

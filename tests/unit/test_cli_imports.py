"""Every command builds the whole parser, so what the command modules import at the top every
`hotadd` invocation pays (a warm `hotadd run` is seconds): pytest only for `hotadd matrix`."""

from __future__ import annotations

import subprocess
import sys

from harness import paths


def test_building_the_parser_does_not_import_pytest() -> None:
    code = ("import sys\nfrom harness.cli import build_parser\nbuild_parser()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pytest', '_pytest')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=paths.REPO_ROOT, check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == "[]"

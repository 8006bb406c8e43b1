"""A domain XML checked against libvirt's own schema (virt-xml-validate), for tests in every
folder that print or build one."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path


def validate(xml: str, tmp_path: Path) -> ET.Element:
    path = tmp_path / "domain.xml"
    path.write_text(xml)
    proc = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return ET.fromstring(xml)

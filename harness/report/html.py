"""placeholder"""
from pathlib import Path
def write_report(directory: Path) -> Path:
    return directory / "report.html"

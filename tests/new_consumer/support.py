"""Running scripts/new_consumer.py (the generator behind `make new-consumer`) from tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GENERATOR = Path("scripts/new_consumer.py")
EXAMPLE = "tagtrends"


def run_generator(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The repo's generator (the copy's own, for a copy), with this interpreter and its tools."""
    return subprocess.run(
        [sys.executable, str(repo / GENERATOR), *args, "--repo", str(repo)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def render_example(directory: Path, name: str = EXAMPLE) -> Path:
    """The example service's files rendered (not registered) into `directory`."""
    result = run_generator(REPO, name, "--render-only", str(directory))
    assert result.returncode == 0, result.stderr
    return directory

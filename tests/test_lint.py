"""The tree keeps one style: ruff's lint rules and its formatter, configured in pyproject.toml.

`ruff` is pinned in requirements.txt, so the README's test command checks the same rules everywhere.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECKED = ["mlprune", "tests", "benchmarks", "examples"]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, *CHECKED], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_ruff_check_finds_nothing():
    result = _ruff("check", "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_changes_nothing():
    result = _ruff("format", "--check", "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr

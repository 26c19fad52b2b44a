"""The tree passes ruff with the settings of setup.cfg."""

from __future__ import annotations

import subprocess
import sys

from helpers import REPO_ROOT


def test_ruff_passes() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/lint.py", "check", "."],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr

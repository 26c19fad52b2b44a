"""Run ruff with the settings of setup.cfg's [tool:ruff] section (ruff reads only TOML)."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ruff_overrides() -> list[str]:
    """Each `key = value` of [tool:ruff] as a `--config key = value` argument pair."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    arguments: list[str] = []
    for key, value in parser["tool:ruff"].items():
        arguments += ["--config", f"{key} = {value}"]
    return arguments


def main() -> int:
    extra = sys.argv[1:] or ["check", "."]
    command = [sys.executable, "-m", "ruff", *extra[:1], *ruff_overrides(), *extra[1:]]
    return subprocess.call(command, cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())

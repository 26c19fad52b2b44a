"""``test`` / ``predict`` of a run's checkpoint use that run's concept and write into that run.

A checkpoint at ``<run>/checkpoints/<name>.ckpt`` has the run's ``config.yaml`` beside its
folder. The concept, the photos and the evaluation prompts are taken from there unless the
command line sets them itself (an experiment config or overlay given to ``test`` does not
count: those describe a recipe, not which subject was trained), and without any ``--config``
the run's whole config is the starting point. The logger then writes into the run's folder
(``eval/test-<n>`` under it), not into a new version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

CHECKPOINT_FOLDER = "checkpoints"
RUN_CONFIG = "config.yaml"
# The DataModule options that say which concept was trained, on what, scored with what.
CONCEPT_KEYS = (
    "instance_data_dir",
    "concept_token",
    "class_word",
    "initializer_word",
    "additional_concepts",
    "shared_tokens",
    "synthetic_num_images",
    "seed",
    "eval_prompts",
)
EVALUATING_COMMANDS = ("test", "predict")


def option_value(argv: list[str], option: str) -> str | None:
    """The last value of ``--option V`` / ``--option=V`` on a command line."""
    value = None
    for index, arg in enumerate(argv):
        if arg == option and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith(option + "="):
            value = arg.split("=", 1)[1]
    return value


def names_option(argv: list[str], option: str) -> bool:
    """``option`` (or one of its sub-options) is set on the command line."""
    return any(arg == option or arg.startswith((option + "=", option + ".")) for arg in argv)


def run_folder_of(checkpoint: str | Path) -> Path | None:
    """The run folder of ``<run>/checkpoints/x.ckpt`` when its config.yaml is there."""
    folder = Path(checkpoint).expanduser().resolve().parent
    if folder.name == CHECKPOINT_FOLDER and (folder.parent / RUN_CONFIG).is_file():
        return folder.parent
    return None


def next_numbered(base: Path, stem: str) -> Path:
    """``base/<stem>-<n>`` with the first n from 1 that does not exist yet."""
    number = 1
    while (base / f"{stem}-{number}").exists():
        number += 1
    return base / f"{stem}-{number}"


def _data_init_args(config: dict[str, Any]) -> dict[str, Any]:
    data = config.get("data") or {}
    return dict(data.get("init_args") or {}) if isinstance(data, dict) else {}


def _as_argument(value: Any) -> str:
    """A value as the parser reads it back: strings as they are, the rest as JSON (YAML)."""
    return value if isinstance(value, str) else json.dumps(value)


def with_run_config(argv: list[str]) -> list[str]:
    """``argv`` (subcommand first) plus what ``test`` / ``predict`` take from the run."""
    if not argv or argv[0] not in EVALUATING_COMMANDS:
        return argv
    checkpoint = option_value(argv, "--ckpt_path")
    run = run_folder_of(checkpoint) if checkpoint else None
    if run is None:
        return argv
    config_file = run / RUN_CONFIG
    saved = yaml.safe_load(config_file.read_text()) or {}
    args = list(argv)
    if option_value(args, "--config") is None:
        args[1:1] = ["--config", str(config_file)]
    for key, value in _data_init_args(saved).items():
        if key in CONCEPT_KEYS and not names_option(args, f"--data.init_args.{key}"):
            args.append(f"--data.init_args.{key}={_as_argument(value)}")
    logger = (saved.get("trainer") or {}).get("logger")
    tensorboard = isinstance(logger, dict) and "TensorBoardLogger" in str(logger.get("class_path"))
    if tensorboard and not names_option(args, "--trainer.logger"):
        # The same logger folder: the run's own version, so eval/ and the events land there.
        args += [
            f"--trainer.logger.init_args.save_dir={run.parent.parent}",
            f"--trainer.logger.init_args.name={run.parent.name}",
            f"--trainer.logger.init_args.version={run.name}",
        ]
    return args

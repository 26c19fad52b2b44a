"""Train and evaluate one (method, subject) pair with the project's own CLI, in one process.

Also the worker the runner starts per pair:

    python -m benchmark.pair --method NAME=CONFIG --subject FOLDER:CLASS:NAME --output OUT \
        [--config EXTRA.yaml ...] [--set trainer.max_steps=100 ...]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from benchmark.subjects import Subject, parse_subject

RESULTS = Path("eval") / "results.json"


@dataclass(frozen=True)
class Method:
    """A method of the table: its row name and its experiment config."""

    name: str
    config: Path


def parse_method(spec: str) -> Method:
    """``CONFIG`` (named by the file's stem) or ``NAME=CONFIG``."""
    name, _, path = spec.rpartition("=")
    config = Path(path)
    if not config.is_file():
        raise FileNotFoundError(f"Method config {str(config)!r} does not exist.")
    return Method(name or config.stem, config)


def run_folder(output: Path, method: Method, subject: Subject) -> Path:
    return output / method.name / subject.name


def results_file(output: Path, method: Method, subject: Subject) -> Path:
    return run_folder(output, method, subject) / RESULTS


def override_args(overrides: list[str]) -> list[str]:
    """``key=value`` -> ``--key value`` for the CLI."""
    args = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"Override {item!r} must be KEY=VALUE, e.g. trainer.max_steps=500.")
        args += [f"--{key.removeprefix('--')}", value]
    return args


def pair_args(
    method: Method,
    subject: Subject,
    output: Path,
    extra_configs: list[Path] | None = None,
    overrides: list[str] | None = None,
) -> list[str]:
    """CLI arguments (no subcommand) that train `method` on `subject` into its run folder."""
    folder = run_folder(output, method, subject)
    args = ["--config", str(method.config)]
    for config in extra_configs or []:
        args += ["--config", str(config)]
    args += [
        "--data.init_args.instance_data_dir", str(subject.folder),
        "--data.init_args.class_word", subject.class_word,
        "--trainer.default_root_dir", str(folder),
        "--trainer.logger.init_args.save_dir", str(folder.parent),
        "--trainer.logger.init_args.name", subject.name,
        "--trainer.logger.init_args.version", "train",
        "--model.init_args.evaluation.output_dir", str(folder / RESULTS.parent),
    ]  # fmt: skip
    return args + override_args(overrides or [])


def run_pair(
    method: Method,
    subject: Subject,
    output: Path,
    extra_configs: list[Path] | None = None,
    overrides: list[str] | None = None,
) -> Path:
    """``fit`` then ``test`` on the trained model; returns the results.json path."""
    from train import main  # the CLI pulls in every model; only a worker needs it

    cli = main(pair_args(method, subject, output, extra_configs, overrides), run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    cli.trainer.test(cli.model, datamodule=cli.datamodule)
    results = results_file(output, method, subject)
    if not results.is_file():
        raise RuntimeError(f"The test stage of {method.name} on {subject.name} wrote no {results}.")
    return results


def worker_command(
    method: Method,
    subject: Subject,
    output: Path,
    extra_configs: list[Path] | None = None,
    overrides: list[str] | None = None,
) -> list[str]:
    """The ``python -m benchmark.pair`` arguments that run this pair in a new process."""
    args = ["--method", f"{method.name}={method.config.resolve()}"]
    args += ["--subject", f"{subject.folder.resolve()}:{subject.class_word}:{subject.name}"]
    args += ["--output", str(output.resolve())]
    for config in extra_configs or []:
        args += ["--config", str(config.resolve())]
    for item in overrides or []:
        args += ["--set", item]
    return ["-m", "benchmark.pair", *args]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train and evaluate one (method, subject) pair.")
    parser.add_argument("--method", required=True, help="NAME=CONFIG or CONFIG")
    parser.add_argument("--subject", required=True, help="FOLDER:CLASS_WORD[:NAME]")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--config", action="append", default=[], type=Path)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args(argv)
    run_pair(
        parse_method(args.method), parse_subject(args.subject), args.output, args.config,
        args.overrides,
    )  # fmt: skip


if __name__ == "__main__":
    main()

"""Train and evaluate one (method, subject[, seed]) pair with the project's CLI, in one process.

Also the worker the runner starts per pair (a Ray task runs it as a process of its own):

    python -m benchmark.pair --method NAME=CONFIG --subject FOLDER:CLASS:NAME --output OUT \
        [--seed 1] [--config EXTRA.yaml ...] [--set trainer.max_steps=100 ...]

A pair's folder is ``<output>/<method>/<subject>`` (``.../seed-<k>`` when the table has seeds).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from benchmark.subjects import Subject, parse_subject

RESULTS = Path("eval") / "results.json"


@dataclass(frozen=True)
class Method:
    """A method of the table: its row name, its experiment config and the overlays that make
    the row (e.g. ACCORD's losses over IP-Adapter: ``ip_adapter.yaml+ip_adapter_dd_pd.yaml``)."""

    name: str
    config: Path
    overlays: tuple[Path, ...] = ()

    @property
    def configs(self) -> list[Path]:
        return [self.config, *self.overlays]

    @property
    def spec(self) -> str:
        """``NAME=CONFIG[+OVERLAY...]``, what `parse_method` reads back."""
        return f"{self.name}=" + "+".join(str(c.resolve()) for c in self.configs)


def parse_method(spec: str) -> Method:
    """``CONFIG``, ``NAME=CONFIG`` or either with overlays, ``CONFIG+OVERLAY+...`` (named by
    the last file's stem without a NAME)."""
    name, _, paths = spec.rpartition("=")
    configs = [Path(path) for path in paths.split("+")]
    for config in configs:
        if not config.is_file():
            raise FileNotFoundError(f"Method config {str(config)!r} does not exist.")
    return Method(name or configs[-1].stem, configs[0], tuple(configs[1:]))


@dataclass(frozen=True)
class Pair:
    """One cell of the grid: a method trained on a subject, with a seed when seeds are an axis."""

    method: Method
    subject: Subject
    seed: int | None = None

    def describe(self) -> str:
        seed = "" if self.seed is None else f" (seed {self.seed})"
        return f"{self.method.name} on {self.subject.name}{seed}"


def run_folder(output: Path, pair: Pair) -> Path:
    folder = output / pair.method.name / pair.subject.name
    return folder if pair.seed is None else folder / f"seed-{pair.seed}"


def results_file(output: Path, pair: Pair) -> Path:
    return run_folder(output, pair) / RESULTS


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
    pair: Pair,
    output: Path,
    extra_configs: list[Path] | None = None,
    overrides: list[str] | None = None,
) -> list[str]:
    """CLI arguments (no subcommand) that train the pair into its run folder."""
    folder = run_folder(output, pair)
    args = [item for config in pair.method.configs for item in ("--config", str(config))]
    for config in extra_configs or []:
        args += ["--config", str(config)]
    args += [
        "--data.init_args.instance_data_dir", str(pair.subject.folder),
        "--data.init_args.class_word", pair.subject.class_word,
        "--trainer.default_root_dir", str(folder),
        "--trainer.logger.init_args.save_dir", str(folder.parent),
        "--trainer.logger.init_args.name", folder.name,
        "--trainer.logger.init_args.version", "train",
        "--model.init_args.evaluation.output_dir", str(folder / RESULTS.parent),
    ]  # fmt: skip
    if pair.subject.kind is not None:
        args += ["--data.init_args.concept_kind", pair.subject.kind]
    if pair.seed is not None:  # the run's seed and the DataModule's (augmentation, order)
        args += ["--seed_everything", str(pair.seed), "--data.init_args.seed", str(pair.seed)]
    return args + override_args(overrides or [])


def run_pair(
    pair: Pair,
    output: Path,
    extra_configs: list[Path] | None = None,
    overrides: list[str] | None = None,
) -> Path:
    """``fit`` then ``test`` on the trained model; returns the results.json path."""
    from train import main  # the CLI pulls in every model; only a worker needs it

    cli = main(pair_args(pair, output, extra_configs, overrides), run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    cli.trainer.test(cli.model, datamodule=cli.datamodule)
    results = results_file(output, pair)
    if not results.is_file():
        raise RuntimeError(f"The test stage of {pair.describe()} wrote no {results}.")
    return results


def worker_command(
    pair: Pair,
    output: Path,
    extra_configs: list[Path] | None = None,
    overrides: list[str] | None = None,
) -> list[str]:
    """The ``python -m benchmark.pair`` arguments that run this pair in a new process."""
    method, subject = pair.method, pair.subject
    args = ["--method", method.spec]
    args += ["--subject", subject.spec]
    args += ["--output", str(output.resolve())]
    if pair.seed is not None:
        args += ["--seed", str(pair.seed)]
    for config in extra_configs or []:
        args += ["--config", str(config.resolve())]
    for item in overrides or []:
        args += ["--set", item]
    return ["-m", "benchmark.pair", *args]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train and evaluate one (method, subject) pair.")
    parser.add_argument("--method", required=True, help="NAME=CONFIG or CONFIG")
    parser.add_argument("--subject", required=True, help="FOLDER:CLASS_WORD[:NAME[:KIND]]")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--config", action="append", default=[], type=Path)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args(argv)
    pair = Pair(parse_method(args.method), parse_subject(args.subject), args.seed)
    run_pair(pair, args.output, args.config, args.overrides)


if __name__ == "__main__":
    main()

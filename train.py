"""Entry point: ``python train.py fit|validate|test|predict --config configs/<...>.yaml``.

LightningCLI in subclass mode: ``model.class_path`` picks the baseline, ``data.class_path``
the DataModule; the concepts the DataModule defines are linked into the model. TensorBoard logs
and the run's ``config.yaml`` go under ``trainer.default_root_dir``; exports under its ``export/``.
"""

from __future__ import annotations

import warnings

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from callbacks.export import ExportWeights

# The frozen Stable Diffusion components are in eval mode on purpose.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")


class PersonalizationCLI(LightningCLI):
    """Links the DataModule's concepts into the model and loads checkpoints weights-only."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.concepts", "model.init_args.concepts", apply_on="instantiate")
        if "weights_only" in parser.get_defaults():
            parser.set_defaults({"weights_only": True})


def main(args: list[str] | None = None, run: bool = True) -> PersonalizationCLI:
    """Build (and by default run) the CLI; tests call this in-process with ``args``."""
    return PersonalizationCLI(
        # Any LightningModule / DataModule class_path: the baselines subclass
        # PersonalizationModule; the contextualizer's pretraining (diverse context) does not.
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": "runs", "name": "personalize"}},
            "callbacks": [ExportWeights(), LearningRateMonitor(logging_interval="step")],
        },
        args=args,
        run=run,
    )


if __name__ == "__main__":
    main()

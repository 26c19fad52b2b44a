"""Entry point: ``python train.py fit|validate|test|predict --config configs/<...>.yaml``.

LightningCLI in subclass mode: ``model.class_path`` picks the baseline, ``data.class_path``
the DataModule; the concepts the DataModule defines are linked into the model. TensorBoard logs
and the run's ``config.yaml`` go under ``trainer.default_root_dir``; exports under its ``export/``.
"""

from __future__ import annotations

from core.quiet import silence_library_noise

silence_library_noise()  # before transformers is imported: it logs its notices then

import os
import signal
import sys
import traceback
from typing import Any

import lightning as L
from jsonargparse import Namespace
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from backbones import TINY_NAMES
from callbacks.empty_run import RemoveEmptyRun
from callbacks.export import ExportWeights
from callbacks.interrupt import SaveOnInterrupt
from callbacks.progress import StepProgressBar
from callbacks.run_summary import summary_lines
from core.errors import config_files, environment_message, user_message
from core.run_config import EVALUATING_COMMANDS, with_run_config
from core.threads import configure_torch_threads
from datamodules.moved_options import moved_option_hint
from training.finite_guard import NonFiniteError
from training.safe_checkpoints import check_loads_weights_only

# True when train.py runs as a program, not when tests call it in-process.
_from_command_line = False
# Where runs go when neither the config nor the command line names trainer.default_root_dir.
DEFAULT_ROOT_DIR = "runs"
# ckpt_path values Lightning resolves itself rather than as a file.
LIGHTNING_CKPT_NAMES = frozenset({"last", "best", "hpc", "registry"})


class PersonalizationCLI(LightningCLI):
    """Links the DataModule's concepts into the model and loads checkpoints weights-only."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        argv = kwargs.get("args")
        argv = sys.argv[1:] if argv is None else argv
        words = [a for a in argv if isinstance(a, str)] if isinstance(argv, list) else []
        self._requested = next((w for w in words if not w.startswith("-")), None)
        super().__init__(*args, **kwargs)

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        """Only the requested subcommand's parser (each adds to start-up to build);
        all four when none is given (``--help``) or it is unknown (the error lists them)."""
        everything = self.subcommands()
        if self._requested not in everything:
            super()._add_subcommands(parser, **kwargs)
            return
        wanted = {self._requested: everything[self._requested]}
        self.subcommands = lambda: wanted  # type: ignore[method-assign]  (this instance only)
        try:
            super()._add_subcommands(parser, **kwargs)
        finally:
            del self.subcommands

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.concepts", "model.init_args.concepts", apply_on="instantiate")

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> Any:
        # The subcommand's own arguments (ckpt_path, weights_only) exist only from here on.
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if "weights_only" in parser.get_defaults():
            parser.set_defaults({"weights_only": True})
        return parser

    def before_instantiate_classes(self) -> None:
        """Every output follows ``trainer.default_root_dir``: a logger without a ``save_dir``
        of its own (the configs name none) writes there, and so its checkpoints and exports."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config["trainer"]
        model_args = (config.get("model") or {}).get("init_args") or {}
        tiny = model_args.get("pretrained_model_name_or_path") in TINY_NAMES
        # From the command line only: a test process keeps one thread count throughout.
        tiny_cpu_run = tiny and trainer.get("accelerator") == "cpu" and _from_command_line
        configure_torch_threads(tiny_cpu_run=tiny_cpu_run)
        if not trainer.get("default_root_dir"):
            trainer["default_root_dir"] = DEFAULT_ROOT_DIR
        loggers = trainer.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            init_args = logger.get("init_args") if isinstance(logger, Namespace) else None
            if init_args is not None and "save_dir" in init_args and not init_args.save_dir:
                init_args.save_dir = trainer["default_root_dir"]

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> L.Trainer:
        """Adds the step progress bar unless the run turns bars off or brings its own."""
        listed = config.get("callbacks") or []
        listed = [*(listed if isinstance(listed, list) else [listed]), *callbacks]
        wanted = config.get("enable_progress_bar") is not False
        if wanted and not any(isinstance(c, ProgressBar) for c in listed):
            callbacks = [*callbacks, StepProgressBar()]
        if self.subcommand in EVALUATING_COMMANDS:
            # test / predict write into the run's folder: its config.yaml is the training's.
            self.save_config_callback = None
        return super()._instantiate_trainer(config, callbacks)

    def before_fit(self) -> None:
        if self.trainer.logger is None:  # --trainer.logger false: nothing to log rates to
            self.trainer.callbacks = [
                c for c in self.trainer.callbacks if not isinstance(c, LearningRateMonitor)
            ]
        if self.trainer.accumulate_grad_batches < 1:
            raise ValueError(
                f"trainer.accumulate_grad_batches is {self.trainer.accumulate_grad_batches}; "
                "give the number of batches per optimizer step (>= 1, 1 accumulates nothing)."
            )
        steps = self.trainer.max_steps
        if steps == 0 or steps < -1:
            raise ValueError(
                f"trainer.max_steps is {steps}; give the number of training steps (>= 1), or -1 "
                "to train for trainer.max_epochs."
            )

    def _parse_ckpt_path(self) -> None:
        """Refuse an unsafe checkpoint before Lightning reads its hyperparameters from it."""
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path and str(path) not in LIGHTNING_CKPT_NAMES:
            check_loads_weights_only(path)  # a missing file is a clear error here too
        super()._parse_ckpt_path()

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        """Checkpoints load weights-only whatever the command line or a library default says
        (one holding pickled objects was refused in `_parse_ckpt_path`)."""
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if "weights_only" in self._subcommand_method_arguments[subcommand]:
            kwargs["weights_only"] = True
        return kwargs


def main(args: list[str] | None = None, run: bool = True) -> PersonalizationCLI:
    """Build (and by default run) the CLI; tests call this in-process with ``args``.

    ``test`` / ``predict`` of a run's checkpoint take that run's concept and folder
    (core/run_config.py).
    """
    if args is None:  # LightningCLI reads sys.argv itself (and warns when given both)
        sys.argv = [sys.argv[0], *with_run_config(sys.argv[1:])]
    else:
        args = with_run_config(list(args))
    return PersonalizationCLI(
        # Any LightningModule / DataModule class_path: the baselines subclass
        # PersonalizationModule; the contextualizer's pretraining (diverse context) does not.
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        # Parse errors come back as exceptions, so the command line prints them as one line.
        parser_kwargs={"exit_on_error": False},
        trainer_defaults={
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": "", "name": "personalize"}},  # "": root dir
            "callbacks": [
                ExportWeights(),
                SaveOnInterrupt(),  # Ctrl-C / SIGTERM: a checkpoint and an export first
                RemoveEmptyRun(),  # a failure before step 1 leaves no version_N/ behind
                LearningRateMonitor(logging_interval="step"),
            ],
            # Checkpoints renamed into place and read weights-only (a class_path, so that
            # --print_config round-trips).
            "plugins": [{"class_path": "training.safe_checkpoints.AtomicCheckpointIO"}],
        },
        args=args,
        run=run,
    )


def interrupted_by(trainer: L.Trainer) -> signal.Signals | None:
    """The signal (Ctrl-C, SIGTERM) that stopped the run after saving, if one did."""
    saver = next((c for c in trainer.callbacks if isinstance(c, SaveOnInterrupt)), None)
    return saver.stopped_by if saver is not None else None


def run_from_command_line(argv: list[str]) -> int:
    """``main`` with user errors as one line, ``error: ...``, exit code 2 (a non-finite loss
    or a full disk: exit code 1); ``--debug`` or PERSONALIZE_DEBUG=1 shows the traceback
    instead. A run stopped by Ctrl-C or SIGTERM exits 130 / 143 once its checkpoint is saved
    (so ``stage1 && stage2`` stops and a cluster requeues it); a finished one says where it
    went."""
    debug = "--debug" in argv or os.environ.get("PERSONALIZE_DEBUG", "") not in ("", "0")
    args = [a for a in argv if a != "--debug"]
    sys.argv = [sys.argv[0], *args]  # LightningCLI reads the command line itself
    try:
        cli = main()
    except SIGTERMException:  # (a SystemExit) SaveOnInterrupt has written its checkpoint
        return 128 + signal.SIGTERM
    except NonFiniteError as error:
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1
    except SystemExit as stop:  # --help, or the parser's own exit
        return int(stop.code or 0) if isinstance(stop.code, int) or stop.code is None else 2
    except Exception as error:
        if debug:
            raise
        problem = environment_message(error)  # the machine's, not the input's: a full disk
        if problem is not None:
            print(f"error: {problem}", file=sys.stderr)
            return 1
        message = user_message(error, config_files(args))
        if message is None:
            traceback.print_exc()
            return 1
        message = moved_option_hint(message)
        print(f"error: {message}", file=sys.stderr)
        return 2
    stopped = interrupted_by(cli.trainer)
    if stopped is not None:
        return 128 + stopped
    for line in summary_lines(cli.subcommand, cli.trainer, cli.model):
        print(line)
    return 0


if __name__ == "__main__":
    _from_command_line = True
    sys.exit(run_from_command_line(sys.argv[1:]))

"""Does the MLM loss reach the optimizer? Held-out MLM loss after training with and without it.

    .venv/bin/python scripts/mlm_held_out.py [--pretrain-steps 400] [--steps 20] [--seeds 0 1 2]

On the tiny pipeline: pretrain a contextualizer (Algorithm 1) into a temporary folder, then for
each baseline and seed train twice from the same seed, once plain and once with ``mlm``, and
score both on held-out context-rich prompts (templates the MLM extra never draws) with the
same fixed masks. Prints one row per (baseline, seed). Not a test: figures, not assertions.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.context_corpus import ContextCorpusDataModule  # noqa: E402
from datamodules.personalization import PersonalizationDataModule  # noqa: E402
from losses.mlm import MaskedLanguageModelingLoss  # noqa: E402
from models import CustomDiffusion, TextualInversion  # noqa: E402
from models.base import PersonalizationModule  # noqa: E402
from models.pretraining.contextualizer import ContextualizerPretraining  # noqa: E402
from prompts.context import (  # noqa: E402
    category_of,
    generate_context_templates,
    split_held_out,
)

BASELINES: dict[str, tuple[type[PersonalizationModule], float]] = {
    "textual_inversion": (TextualInversion, 2e-2),  # (class, learning rate)
    "custom_diffusion": (CustomDiffusion, 1e-3),
}
QUIET = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}


def pretrain(folder: Path, steps: int, batch_size: int, lr: float) -> dict[str, float]:
    """Pretrain psi on the tiny pipeline into ``folder``; return its last metrics."""
    L.seed_everything(0, verbose=False)
    module = ContextualizerPretraining(
        export_dir=str(folder),
        lr_warmup_steps=steps // 10,
        optimizer=lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=1e-2),
    )
    corpus = ContextCorpusDataModule(batch_size=batch_size, val_prompts=128)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps, enable_checkpointing=False,
        val_check_interval=steps, check_val_every_n_epoch=None, limit_val_batches=4, **QUIET,
    )  # fmt: skip
    trainer.fit(module, datamodule=corpus)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def held_out_prompts(phrase: str, class_word: str, count: int) -> list[str]:
    templates = split_held_out(generate_context_templates(category_of(class_word), 10_000))[1]
    return [t.format(phrase) for t in templates[:count]]


def train_and_score(
    baseline: str, psi: Path, seed: int, steps: int, weight: float, use_mlm: bool, held: list[str]
) -> tuple[float, float]:
    """(held-out MLM loss before, after) of one run."""
    cls, lr = BASELINES[baseline]
    L.seed_everything(seed, verbose=False)
    data = PersonalizationDataModule(resolution=32, batch_size=2, repeats=10, seed=seed)
    scorer = MaskedLanguageModelingLoss(weight=weight, contextualizer_dir=str(psi))
    module = cls(
        concepts=data.concepts,
        regularizers=[scorer] if use_mlm else [],
        optimizer=lambda params: torch.optim.AdamW(params, lr=lr),
        seed=seed,
    )
    scorer.prepare(module)
    before = scorer.evaluate(module, held, seed=0)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps, enable_checkpointing=False, limit_val_batches=0,
        **QUIET,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    module.eval()
    return before, scorer.evaluate(module, held, seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-steps", type=int, default=400)
    parser.add_argument("--pretrain-batch", type=int, default=32)
    parser.add_argument("--pretrain-lr", type=float, default=3e-3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--weight", type=float, default=1.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--baselines", nargs="+", default=list(BASELINES))
    parser.add_argument("--held-out", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny models: one thread is as fast and steadier on busy CPUs
    with tempfile.TemporaryDirectory() as tmp:
        psi = Path(tmp) / "psi"
        metrics = pretrain(psi, args.pretrain_steps, args.pretrain_batch, args.pretrain_lr)
        print(f"contextualizer: {args.pretrain_steps} steps, held-out corpus "
              f"val/loss/mlm {metrics['val/loss/mlm']:.3f}, "
              f"val/accuracy {metrics['val/accuracy']:.3f}")  # fmt: skip
        held = held_out_prompts("<v1> toy", "toy", args.held_out)
        print(f"{'baseline':<19}{'seed':>5}{'before':>9}{'plain':>9}{'with mlm':>10}{'diff':>9}")
        rows: list[Any] = []
        for baseline in args.baselines:
            for seed in args.seeds:
                common = (baseline, psi, seed, args.steps, args.weight)
                before, plain = train_and_score(*common, use_mlm=False, held=held)
                _, with_mlm = train_and_score(*common, use_mlm=True, held=held)
                rows.append((baseline, seed, plain, with_mlm))
                print(f"{baseline:<19}{seed:>5}{before:>9.4f}{plain:>9.4f}{with_mlm:>10.4f}"
                      f"{with_mlm - plain:>+9.4f}")  # fmt: skip
        wins = sum(r[3] < r[2] for r in rows)
        print(f"with mlm lower in {wins} of {len(rows)} runs")


if __name__ == "__main__":
    main()

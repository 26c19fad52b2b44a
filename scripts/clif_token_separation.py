"""How far apart CLIF's stage 1 pushes two concepts that start from the same word.

    python scripts/clif_token_separation.py [--steps 200] [--photos a=dir b=dir]

Two concepts (by default the tiny pipeline's two synthetic toys, both initialised from "toy";
with ``--photos`` two photo folders, both initialised from their first class word) go through
``configs/clif/stage1_text.yaml`` on the tiny overlay, with the same seed. Printed: the cosine
and the L2 distance of their token vectors before training and every ``--every`` steps, for
the paper's variant (tokens + text-encoder LoRA) and the tokens-only one, and for Textual
Inversion on the same two concepts (reconstruction alone) as the baseline.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import train  # noqa: E402

RUNS = {
    "CLIF stage 1 (tokens + text LoRA)": ["--config", "configs/clif/stage1_text.yaml"],
    "CLIF stage 1, tokens only": ["--config", "configs/clif/stage1_text.yaml",
                                  "--model.init_args.train_text_encoder", "false"],
    "Textual Inversion (no contrast)": ["--config", "configs/textual_inversion.yaml"],
}  # fmt: skip


def separation(module: L.LightningModule) -> tuple[float, float]:
    first = module.concept_tokens.vectors_of(0).detach().flatten().float()
    second = module.concept_tokens.vectors_of(1).detach().flatten().float()
    return float(F.cosine_similarity(first, second, dim=0)), float((first - second).norm())


class Record(L.Callback):
    def __init__(self, every: int) -> None:
        self.every, self.rows = every, []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows.append((0, *separation(pl_module)))

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *_: object
    ) -> None:
        if trainer.global_step % self.every == 0:
            self.rows.append((trainer.global_step, *separation(pl_module)))


def concept_args(photos: list[str] | None) -> list[str]:
    if not photos:
        return ["--data.init_args.additional_concepts", "[{token: <v2>, class_word: toy}]"]
    (word_a, folder_a), (word_b, folder_b) = (p.split("=", 1) for p in photos)
    return [
        "--data.init_args.instance_data_dir", folder_a, "--data.init_args.class_word", word_a,
        "--data.init_args.initializer_word", word_a,
        "--data.init_args.additional_concepts",
        f"[{{token: <v2>, class_word: {word_b}, instance_data_dir: {folder_b}, "
        f"initializer_word: {word_a}}}]",
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--photos", nargs=2, metavar="CLASS=FOLDER")
    args = parser.parse_args()
    os.chdir(REPO_ROOT)
    with tempfile.TemporaryDirectory() as root:
        for name, config in RUNS.items():
            command = [
                *config, "--config", "configs/tiny.yaml", *concept_args(args.photos),
                "--trainer.max_steps", str(args.steps), "--trainer.callbacks=[]",
                "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
                "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                "--trainer.default_root_dir", root,
                "--data.init_args.batch_size", "4",
            ]  # fmt: skip
            if "clif" in config[1]:
                command += ["--data.init_args.augmentation.general_data_dir", f"{root}/general"]
            cli = train.main(command, run=False)
            record = Record(args.every)
            cli.trainer.callbacks.append(record)
            cli.before_fit()
            torch.manual_seed(0)
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
            print(f"\n{name}: step, cosine(<v1>, <v2>), |<v1> - <v2>|")
            for step, cosine, distance in record.rows:
                print(f"  {step:>5}  {cosine:.4f}  {distance:.4f}")


if __name__ == "__main__":
    main()

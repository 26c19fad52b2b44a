"""Train each method a few steps and save its trained weights: run on 1 process and under
torchrun on 2, then compare (tests/test_ddp_equivalence.py).

    python tests/ddp_equivalence.py OUT GLOBAL_BATCH [METHOD ...]
    python -m torch.distributed.run --standalone --nproc_per_node 2 \
        tests/ddp_equivalence.py OUT GLOBAL_BATCH [METHOD ...]

Each process runs every method's ``fit`` in turn (the process group is made once), each rank
with a local batch of GLOBAL_BATCH / world size, through the same CLI as ``train.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import lightning as L
import torch
from safetensors.torch import save_file

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from helpers import trainable_state  # noqa: E402  (tests/, this script's own folder)

import train  # noqa: E402  (after the path: this file runs as a script)

# method name -> its config(s) (each runs with configs/tiny.yaml after them).
METHOD_CONFIGS: dict[str, str | tuple[str, ...]] = {
    "textual_inversion": "configs/textual_inversion.yaml",
    # NeTI: nested dropout drawn per (sample, layer), so each rank's share draws what the one
    # process draws for the same samples (plain Custom Diffusion runs under spl and dd_loss).
    "neti": "configs/classdiffusion/neti.yaml",
    "dreambooth": "configs/dreambooth.yaml",
    "lora": "configs/lora.yaml",
    "spl": "configs/classdiffusion/custom_diffusion.yaml",
    "dd_loss": "configs/accord/custom_diffusion.yaml",
    # No UNet call: the InfoNCE's negatives come from both ranks through the gradient-carrying
    # gather, so two ranks at batch 1 see the batch-2 loss one process sees.
    "clif_stage1": "configs/clif/stage1_text.yaml",
    # SDXL: each sample's size ids and pooled text reach the UNet and DDLoss's extra calls;
    # the ranks' shares must condition exactly as the one process's batch does.
    "sdxl_accord": ("configs/accord/custom_diffusion.yaml", "configs/backbones/sdxl.yaml"),
    # FLUX: flow matching's per-sample sigma draws, T5 + CLIP tokens (pivotal tuning) and
    # DDLoss's velocity-space weight, each rank's share as in the one process's batch.
    "flux_accord": ("configs/accord/lora.yaml", "configs/accord/flux/lora.yaml"),
    # The training options together: buckets' epoch order in whole global batches, Min-SNR's
    # per-sample weights, the masked loss's per-sample masks, the EMA updated per step.
    "lora_options": "configs/lora.yaml",
}
# Options a method needs beyond the shared ones: folders under the test's own directory.
EXTRA_OPTIONS = {
    "lora_options": lambda out: [
        "--model.init_args.min_snr_gamma", "5.0",
        "--model.init_args.background_loss_weight", "0.2",
        "--model.init_args.ema", "{decay: 0.9}",
        "--data.init_args.buckets", "{step: 8}",
        "--data.init_args.augmentation", "{g_aug: 0, r_aug: 0, m_aug: 0, segmenter: fallback}",
    ],
    "clif_stage1": lambda out: [
        "--data.init_args.augmentation.general_data_dir", str(out / "general_images"),
        "--data.init_args.augmentation.general_images_per_concept", "1",
        "--data.init_args.augmentation.cache_dir", str(out / "augmented"),
        "--data.init_args.augmentation.g_aug", "4",
        "--data.init_args.augmentation.r_aug", "4",
        "--data.init_args.augmentation.m_aug", "0",
    ],
}
STEPS = 7  # 10 samples (5 toy photos x 2 repeats) at global batch 2: crosses an epoch


class TrainedAtStart(L.Callback):
    """Keeps the trained parameters as they are before the first step."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.weights = trainable_state(pl_module)  # type: ignore[arg-type]


def fit_and_save(method: str, out: Path, global_batch: int, world_size: int) -> None:
    """One short fit of ``method``; rank 0 saves the trained parameters
    (before and after)."""
    if global_batch % world_size:
        raise SystemExit(f"error: global batch {global_batch} is not divisible by {world_size}")
    run_dir = out / f"runs-{world_size}" / method
    configs = METHOD_CONFIGS[method]
    configs = (configs,) if isinstance(configs, str) else configs
    args = [
        *(part for config in configs for part in ("--config", config)),
        "--config", "configs/tiny.yaml",
        "--trainer.devices", str(world_size),
        "--trainer.strategy", "ddp" if world_size > 1 else "auto",
        "--trainer.max_steps", str(STEPS),
        "--trainer.callbacks=[]", "--trainer.logger", "false",
        "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(run_dir),
        "--data.init_args.batch_size", str(global_batch // world_size),
        "--data.init_args.repeats", "2",
        # A learning rate that moves every method's weights well past float rounding in 7 steps.
        "--model.init_args.optimizer.init_args.lr", "1e-3",
        # One class-image folder for both runs: the same prior images (made by the first run).
        "--data.init_args.class_images.folder", str(out / "class_images"),
        *EXTRA_OPTIONS.get(method, lambda out: [])(out),
    ]  # fmt: skip
    cli = train.main(args, run=False)
    start = TrainedAtStart()
    cli.trainer.callbacks.append(start)
    cli.before_fit()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    if cli.trainer.global_rank == 0:
        save_file(start.weights, str(out / f"{method}-start.safetensors"))
        save_file(trainable_state(cli.model), str(out / f"{method}-world{world_size}.safetensors"))


def main(argv: list[str]) -> None:
    out, global_batch = Path(argv[0]), int(argv[1])
    methods = argv[2:] or list(METHOD_CONFIGS)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(1)  # two processes on two cores; also what makes 1 vs 2 comparable
    os.chdir(REPO_ROOT)
    for method in methods:
        fit_and_save(method, out, global_batch, world_size)


if __name__ == "__main__":
    main(sys.argv[1:])

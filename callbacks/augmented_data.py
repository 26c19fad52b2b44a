"""A grid of each kind of CLIF's augmented data (G/R/M-Aug) in TensorBoard at train start.

What the contrastive loss and the M-Aug photos train on is worth seeing before the first step:
a bad mask or a wrong prompt shows at once. The grids also land as PNGs in
``<log_dir>/augmented/`` with their prompts, and the set's folder and counts go to the text tab.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image

from core.images import make_grid

KINDS = ("g_aug", "r_aug", "m_aug")


class AugmentedDataGrids(L.Callback):
    """Logs up to ``per_kind`` images of each kind, shown at least ``side`` px."""

    def __init__(self, per_kind: int = 8, side: int = 128) -> None:
        if per_kind < 1 or side < 8:
            raise ValueError("AugmentedDataGrids needs per_kind >= 1 and side >= 8.")
        self.per_kind, self.side = per_kind, side

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or getattr(datamodule, "augmented", None) is None:
            return
        built = datamodule.augmented_set()  # every rank: it may wait at a barrier
        if not trainer.is_global_zero:
            return
        folder = Path(trainer.log_dir or trainer.default_root_dir) / "augmented"
        folder.mkdir(parents=True, exist_ok=True)
        experiment = getattr(trainer.logger, "experiment", None)
        summary = [f"set: {built.folder} (reused: {built.reused}, built in "
                   f"{built.build_seconds:.1f} s)"]  # fmt: skip
        for kind in KINDS:
            items = built.of_kind(kind)
            summary.append(f"{kind}: {len(items)} images")
            if not items:
                continue
            shown = items[: self.per_kind]
            images = torch.stack([self._tensor(built.image(item)) for item in shown])
            grid = make_grid(images, columns=min(4, len(shown)))
            pixels = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{kind}.png")
            prompts = "\n".join(f"{i}: {item.prompt}" for i, item in enumerate(shown))
            (folder / f"{kind}.txt").write_text(prompts + "\n")
            if experiment is not None and hasattr(experiment, "add_image"):
                experiment.add_image(f"augmented/{kind}", grid, trainer.global_step)
                experiment.add_text(f"augmented/{kind}/prompts", prompts.replace("\n", "\n\n"))
        if experiment is not None and hasattr(experiment, "add_text"):
            experiment.add_text("augmented/summary", "\n\n".join(summary))

    def _tensor(self, image: Image.Image) -> torch.Tensor:
        if image.width < self.side:
            image = image.resize((self.side, self.side), Image.Resampling.NEAREST)
        return torch.from_numpy(np.asarray(image.convert("RGB"), np.float32) / 255).permute(2, 0, 1)

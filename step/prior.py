"""DreamBooth's prior preservation, as the base module runs it: one UNet call for both halves.

Instance and class samples are concatenated into one batch (latents, noise, timesteps, prompts),
so the UNet runs once a step; the resulting `StepRecord` is then split so that its own fields
keep the instance half (what regularizers see) and ``record.prior`` holds the class half, on
which the base adds ``prior_loss_weight`` x the masked denoising MSE as ``train/loss/prior``.
"""

from __future__ import annotations

from dataclasses import fields, replace

import torch

from step.record import StepRecord

# What the DataModule must provide (datamodules/extras/class_images.py builds them).
PRIOR_BATCH_KEYS = frozenset({"class_pixel_values", "class_prompts"})
PRIOR_REQUESTER = "Prior preservation"


def split_prior(record: StepRecord, num_instances: int) -> StepRecord:
    """The instance half of a concatenated record, with the class half as its ``prior``."""
    total = record.latents.shape[0]
    if not 0 < num_instances < total:
        raise ValueError(f"Cannot split {total} samples at {num_instances} into two halves.")
    instance: dict[str, object] = {}
    prior: dict[str, object] = {}
    for field in fields(record):
        value = getattr(record, field.name)
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == total:
            instance[field.name], prior[field.name] = value[:num_instances], value[num_instances:]
        else:  # anything not per sample (a field added later, say) is shared by both halves
            prior[field.name] = value
    batch = record.batch
    prior["batch"] = {
        "pixel_values": batch["class_pixel_values"],
        "prompts": list(batch["class_prompts"]),
    }
    prior["prior"] = None
    return replace(record, **instance, prior=StepRecord(**prior))  # type: ignore[arg-type]

"""Sharded full fine-tuning: Lightning's FSDP with one shard unit per transformer block.

A 12B FLUX transformer with AdamW's two moments needs about 190 GB in fp32, more than one card
holds, so DreamBooth on it shards parameters, gradients and optimizer state over the GPUs. Each
of the named block classes is its own FSDP unit (gathered for its forward, freed after) and is
recomputed in backward (activation checkpointing); what is not in a block (the embedders, the
frozen text encoders and VAE) stays in the root unit.

- ``use_orig_params`` is on: the root unit holds frozen parameters beside trained ones, which
  FSDP flattens together only when it keeps the original parameters, and the optimizer groups
  (`trainable_groups`) name those originals.
- Checkpoints are ``full`` (rank 0 gathers one ordinary ``.ckpt``), not ``sharded``: a sharded
  checkpoint's metadata is a pickle that torch's weights-only loader refuses, and every
  checkpoint here is loaded weights-only. Gathering costs host memory on rank 0 (about three
  times the fp32 weights for AdamW), which is what a multi-GPU host has.
"""

from __future__ import annotations

import importlib
from typing import Any

from lightning.pytorch.strategies import FSDPStrategy
from torch import nn


def block_class(path: str) -> type[nn.Module]:
    """The class at ``module.Class``; a clear error for a path that names none."""
    module_name, _, class_name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), class_name) if module_name else None
    except (ImportError, AttributeError):  # diffusers' lazy modules raise the latter
        found = None
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        raise ValueError(
            f"trainer.strategy.init_args.blocks: {path!r} is not a torch module class; give "
            "each block's import path, e.g. "
            "diffusers.models.transformers.transformer_flux.FluxTransformerBlock"
        )
    return found


class BlockFSDP(FSDPStrategy):
    """FSDP wrapping (and checkpointing) each of ``blocks``; other options as FSDPStrategy's."""

    def __init__(
        self,
        blocks: list[str],
        checkpoint_blocks: bool = True,
        state_dict_type: str = "full",
        **kwargs: Any,
    ) -> None:
        """
        Args:
            blocks: import paths of the denoiser's repeated block classes.
            checkpoint_blocks: recompute each block in backward instead of keeping its
                activations.
            state_dict_type: ``full`` (one ``.ckpt``, loaded weights-only on resume).
        """
        if not blocks:
            raise ValueError("trainer.strategy.init_args.blocks is empty; name the block classes")
        if state_dict_type != "full":
            raise ValueError(
                f"trainer.strategy.init_args.state_dict_type: {state_dict_type!r}; only 'full' "
                "checkpoints load weights-only here (a sharded one's metadata is a pickle)"
            )
        classes = {block_class(path) for path in blocks}
        kwargs.setdefault("use_orig_params", True)
        super().__init__(
            auto_wrap_policy=classes,
            activation_checkpointing_policy=classes if checkpoint_blocks else None,
            state_dict_type="full",
            **kwargs,
        )

    def setup_environment(self) -> None:
        if self.root_device.type != "cuda":  # torch's FSDP would fail later, with a traceback
            raise ValueError(
                f"trainer.strategy: FSDP (training.fsdp.BlockFSDP) shards over CUDA GPUs, and "
                f"this run is on {self.root_device.type}; leave the FSDP overlay out here"
            )
        super().setup_environment()

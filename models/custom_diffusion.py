"""Custom Diffusion (Kumari et al. 2023): cross-attention K/V plus the concept tokens train.

diffusers' own Custom Diffusion attention processor holds the trained K/V copies, so the export
is exactly what ``unet.load_attn_procs`` reads; it also detaches the start token's K/V, as the
paper does, because that token carries no concept information.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from diffusers.models.attention_processor import CustomDiffusionAttnProcessor2_0
from safetensors.torch import save_file
from torch import nn

from models.base import PersonalizationModule

CUSTOM_DIFFUSION_WEIGHTS = "pytorch_custom_diffusion_weights.safetensors"


def load_custom_diffusion(pipe: StableDiffusionPipeline, folder: str | Path) -> None:
    """Install an export into a diffusers pipeline: K/V processors and each ``<token>``.

    Calls diffusers' own loaders. ``_pipeline=pipe`` is what diffusers' pipeline-level loaders
    pass; without it, diffusers 0.42's ``unet.load_attn_procs`` parses the file but never
    installs the processors.
    """
    folder = Path(folder)
    pipe.unet.load_attn_procs(folder, weight_name=CUSTOM_DIFFUSION_WEIGHTS, _pipeline=pipe)
    for token_file in sorted(folder.glob("*.safetensors")):
        if token_file.name != CUSTOM_DIFFUSION_WEIGHTS:
            pipe.load_textual_inversion(token_file)


class CustomDiffusion(PersonalizationModule):
    """Trains K/V of every cross-attention layer (optionally Q and out too) and the tokens."""

    def __init__(self, train_q_out: bool = False, **kwargs: Any) -> None:
        """
        Args:
            train_q_out: also train the query and output projections (the paper's ablation;
                its recipe trains K/V only).
        """
        super().__init__(**kwargs)
        self.train_q_out = train_q_out
        self.unet.set_attn_processor(self._custom_processors())

    def _custom_processors(self) -> dict[str, nn.Module]:
        """One trainable processor per cross-attention layer, initialised from its K/V."""
        processors: dict[str, nn.Module] = {}
        for name in self.unet.attn_processors:
            attention = self.unet.get_submodule(name.removesuffix(".processor"))
            if not name.endswith("attn2.processor"):
                # A weightless one on self-attention: diffusers' saver expects every layer's.
                processors[name] = CustomDiffusionAttnProcessor2_0(
                    train_kv=False, train_q_out=False, hidden_size=attention.to_q.out_features
                )
                continue
            processor = CustomDiffusionAttnProcessor2_0(
                train_kv=True,
                train_q_out=self.train_q_out,
                hidden_size=attention.to_q.out_features,
                cross_attention_dim=attention.to_k.in_features,
            )
            weights = {
                "to_k_custom_diffusion.weight": attention.to_k.weight,
                "to_v_custom_diffusion.weight": attention.to_v.weight,
            }
            if self.train_q_out:
                weights["to_q_custom_diffusion.weight"] = attention.to_q.weight
                weights["to_out_custom_diffusion.0.weight"] = attention.to_out[0].weight
                weights["to_out_custom_diffusion.0.bias"] = attention.to_out[0].bias
            with torch.no_grad():
                processor.load_state_dict({k: v.detach().clone() for k, v in weights.items()})
            processors[name] = processor.to(attention.to_q.weight.device)
        return processors

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = super().trainable_groups()
        processors = [p for p in self.unet.attn_processors.values() if isinstance(p, nn.Module)]
        groups["kv"] = [param for proc in processors for param in proc.parameters()]
        return groups

    def export(self, folder: Path) -> list[Path]:
        """``pytorch_custom_diffusion_weights.safetensors`` and one ``<token>.safetensors`` each."""
        folder.mkdir(parents=True, exist_ok=True)
        # Keys as diffusers' loader reads them: "<layer>.processor.to_k_custom_diffusion.weight",
        # and an empty entry per weightless self-attention processor, because the loader sets
        # one processor per attention layer and reads the weightless ones from those entries.
        weights = {
            name: tensor.detach().float().cpu().contiguous()
            for name, tensor in self.unet.state_dict().items()
            if "_custom_diffusion" in name
        }
        for name, processor in self.unet.attn_processors.items():
            if not any(True for _ in processor.parameters()):
                weights[name] = torch.empty(0)
        save_file(weights, str(folder / CUSTOM_DIFFUSION_WEIGHTS))
        paths = {c.token: folder / f"{c.token}.safetensors" for c in self.concepts}
        return [folder / CUSTOM_DIFFUSION_WEIGHTS, *self.export_token_embeddings(paths)]

"""Custom Diffusion (Kumari et al. 2023): cross-attention K/V plus the concept tokens train.

diffusers' own Custom Diffusion attention processor holds the trained K/V copies, so the export
is exactly what ``unet.load_attn_procs`` reads; it also detaches the start token's K/V, as the
paper does, because that token carries no concept information.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0, CustomDiffusionAttnProcessor2_0
from safetensors.torch import load_file, save_file
from torch import nn

from exports.external_formats import load_embedding
from exports.manifest import TOKEN_FILE_FORMATS, Format
from exports.single_file import SINGLE_FILE, check_single_file_family, write_single_file
from models.base import PersonalizationModule

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

CUSTOM_DIFFUSION_WEIGHTS = "pytorch_custom_diffusion_weights.safetensors"
# FLUX: the joint attention's text-side projections, by the transformer's own parameter names
# (diffusers has no Custom Diffusion loader for FLUX; `load_custom_diffusion` installs them).
CUSTOM_DIFFUSION_FLUX = "custom_diffusion_text_kv.safetensors"
FLUX_TEXT_KV = ("attn.add_k_proj", "attn.add_v_proj")
FLUX_TEXT_Q_OUT = ("attn.add_q_proj", "attn.to_add_out")


def load_custom_diffusion(pipe: StableDiffusionPipeline, folder: str | Path) -> None:
    """Install an export into a diffusers pipeline: K/V processors and each ``<token>``.

    Calls diffusers' own loaders. ``_pipeline=pipe`` is what diffusers' pipeline-level loaders
    pass; without it, diffusers 0.42's ``unet.load_attn_procs`` parses the file but never
    installs the processors.
    """
    folder = Path(folder)
    if (folder / CUSTOM_DIFFUSION_FLUX).is_file():  # FLUX: the trained projections in place
        weights = load_file(str(folder / CUSTOM_DIFFUSION_FLUX))
        missing = set(weights) - set(pipe.transformer.state_dict())
        if missing:
            raise ValueError(f"{folder} names layers this transformer lacks: {sorted(missing)[:3]}")
        pipe.transformer.load_state_dict(weights, strict=False)
    else:
        pipe.unet.load_attn_procs(folder, weight_name=CUSTOM_DIFFUSION_WEIGHTS, _pipeline=pipe)
    for token_file in sorted(folder.glob("*.safetensors")):
        if token_file.name not in (CUSTOM_DIFFUSION_WEIGHTS, CUSTOM_DIFFUSION_FLUX, SINGLE_FILE):
            load_embedding(pipe, token_file)


def merge_custom_diffusion(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """Write Custom Diffusion processors' trained projections into the UNet's own attention
    layers and give it diffusers' default processors (in place): the plain UNet the weights
    define, which any pipeline or single-file checkpoint takes."""
    with torch.no_grad():
        for name, processor in unet.attn_processors.items():
            layer = unet.get_submodule(name.rsplit(".processor", 1)[0])
            if getattr(processor, "train_kv", False):
                layer.to_k.weight.copy_(processor.to_k_custom_diffusion.weight)
                layer.to_v.weight.copy_(processor.to_v_custom_diffusion.weight)
            if getattr(processor, "train_q_out", False):
                layer.to_q.weight.copy_(processor.to_q_custom_diffusion.weight)
                layer.to_out[0].load_state_dict(processor.to_out_custom_diffusion[0].state_dict())
    unet.set_attn_processor(AttnProcessor2_0())  # diffusers' default (SDPA)
    return unet


class CustomDiffusion(PersonalizationModule):
    """Trains K/V of every cross-attention layer (optionally Q and out too) and the tokens."""

    families: ClassVar[frozenset[str]] = frozenset({"sd1", "sdxl", "flux"})
    EXPORT_FORMATS: ClassVar[tuple[tuple[str, str], ...]] = (
        (CUSTOM_DIFFUSION_WEIGHTS, Format.CUSTOM_DIFFUSION),
        (CUSTOM_DIFFUSION_FLUX, Format.CUSTOM_DIFFUSION),
        (SINGLE_FILE, Format.SINGLE_FILE_CHECKPOINT),
        *TOKEN_FILE_FORMATS,
    )
    load_into = staticmethod(load_custom_diffusion)  # the K/V processors and each <token>

    def __init__(
        self, train_q_out: bool = False, export_single_file: bool = False, **kwargs: Any
    ) -> None:
        """
        Args:
            train_q_out: also train the query and output projections (the paper's ablation;
                its recipe trains K/V only).
            export_single_file: also export the whole model, the projections merged, as one
                original-layout checkpoint (``sd_checkpoint.safetensors``, for A1111 /
                ComfyUI): the size of the base model, in every step export too.
        """
        super().__init__(**kwargs)
        check_single_file_family(export_single_file, self.family.name)
        self.train_q_out, self.export_single_file = train_q_out, export_single_file
        if self.family.denoiser_name == "unet":
            self.unet.set_attn_processor(self._custom_processors())
        else:  # FLUX's joint attention: its text-side projections train in place
            for param in self._text_projections():
                param.requires_grad_(True)

    def _text_projections(self) -> list[nn.Parameter]:
        """FLUX: the double-stream blocks' projections of the text tokens (K/V; with
        ``train_q_out`` their query and output too). The image tokens' projections and the
        single-stream blocks, which project text and image with one weight, stay frozen: as
        on a UNet, only what the text is turned into trains."""
        layers = FLUX_TEXT_KV + (FLUX_TEXT_Q_OUT if self.train_q_out else ())
        return [
            param
            for name, param in self.unet.named_parameters()
            if name.startswith("transformer_blocks.") and name.rsplit(".", 1)[0].endswith(layers)
        ]

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
        if self.family.denoiser_name != "unet":
            groups["kv"] = self._text_projections()
            return groups
        processors = [p for p in self.unet.attn_processors.values() if isinstance(p, nn.Module)]
        groups["kv"] = [param for proc in processors for param in proc.parameters()]
        return groups

    def export(self, folder: Path) -> list[Path]:
        """``pytorch_custom_diffusion_weights.safetensors`` and one ``<token>.safetensors`` each."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = {c.token: folder / f"{c.token}.safetensors" for c in self.concepts}
        if self.family.denoiser_name != "unet":
            names = {id(p) for p in self._text_projections()}
            weights = {
                name: param.detach().float().cpu().contiguous()
                for name, param in self.unet.named_parameters()
                if id(param) in names
            }
            save_file(weights, str(folder / CUSTOM_DIFFUSION_FLUX))
            return [folder / CUSTOM_DIFFUSION_FLUX, *self.export_token_embeddings(paths)]
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
        written = [folder / CUSTOM_DIFFUSION_WEIGHTS]
        if self.export_single_file:
            # The same model as one original-layout checkpoint (A1111 / ComfyUI): the trained
            # projections merged into the UNet; the tokens go with it as a1111/ embeddings.
            vocabulary = self.concept_tokens.embedding.base.weight.shape[0]
            encoders = [self.standalone_text_encoder(i) for i in range(len(self.text_encoders))]
            written.append(
                write_single_file(
                    folder / SINGLE_FILE, self.merged_unet(), self.vae, encoders, vocabulary
                )
            )
        return [*written, *self.export_token_embeddings(paths)]

    def merged_unet(self) -> UNet2DConditionModel:
        """A copy of the UNet with the trained projections merged (`merge_custom_diffusion`)."""
        return merge_custom_diffusion(copy.deepcopy(self.unet))

"""LoRA (Hu et al. 2021) through peft, as diffusers' DreamBooth-LoRA recipe applies it.

Low-rank adapters on the UNet attention projections (to_q, to_k, to_v, to_out.0), optionally on
the text encoder's (q/k/v/out_proj); the model itself stays frozen. The export is
``pytorch_lora_weights.safetensors`` in diffusers' key format with the adapters' peft config as
metadata (so an alpha other than the rank survives ``pipe.load_lora_weights``), plus one
``<token>.safetensors`` per concept. The tokens do not train by default (ACCORD's LoRA baseline
does not train the target's representation), but their files are written anyway: a prompt with
``<v1>`` means the same in diffusers only once ``load_textual_inversion`` has added the token.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from exports.external_formats import (
    KOHYA_LORA,
    KOHYA_PREFIXES,
    SDXL_KOHYA_PREFIXES,
    load_embedding,
    write_kohya_lora,
)
from exports.kohya_flux import write_kohya_flux_lora
from exports.lycoris import write_lycoris
from exports.manifest import TOKEN_FILE_FORMATS, Format
from models.base import PersonalizationModule
from models.lora_adapters import (
    LORA_WEIGHTS,
    TEXT_ENCODER_TARGETS,
    add_seeded_adapters,
    check_adapter_kind,
    check_lora_options,
    has_adapters,
    lora_parameters,
    peft_state,
    save_lora_layers,
)

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

__all__ = ["LORA_WEIGHTS", "LYCORIS_FILE", "LoRA", "load_lora"]
LYCORIS_FILE = "lycoris.safetensors"


def load_lora(pipe: StableDiffusionPipeline, folder: str | Path) -> None:
    """Install an export into a diffusers pipeline with diffusers' own loaders."""
    folder = Path(folder)
    if (folder / LYCORIS_FILE).is_file():
        raise ValueError(
            f"{folder} holds LoHa / LoKr adapters ({LYCORIS_FILE}), which diffusers cannot "
            "load; load that file in ComfyUI, A1111 or kohya's sd-scripts, or train with "
            "adapter: lora or dora for a diffusers export."
        )
    if (folder / LORA_WEIGHTS).is_file():  # (CLIF's tokens-only stage 1 writes tokens only)
        pipe.load_lora_weights(folder, weight_name=LORA_WEIGHTS)
    for token_file in sorted(folder.glob("*.safetensors")):
        if token_file.name not in (LORA_WEIGHTS, KOHYA_LORA):
            load_embedding(pipe, token_file)


class LoRA(PersonalizationModule):
    """Trains peft LoRA adapters (UNet attention; text encoder optional) and optionally tokens."""

    families: ClassVar[frozenset[str]] = frozenset({"sd1", "sdxl", "flux"})
    EXPORT_FORMATS: ClassVar[tuple[tuple[str, str], ...]] = (
        (LORA_WEIGHTS, Format.DIFFUSERS_LORA),
        (KOHYA_LORA, Format.KOHYA_LORA),
        (LYCORIS_FILE, Format.LYCORIS),
        *TOKEN_FILE_FORMATS,
    )
    load_into = staticmethod(load_lora)  # load_lora_weights, then each <token>

    def __init__(
        self,
        rank: int = 4,
        alpha: float | None = None,
        train_text_encoder: bool = False,
        adapter: str = "lora",
        **kwargs: Any,
    ) -> None:
        """
        Args:
            rank: LoRA rank r of every adapter (>= 1).
            alpha: LoRA alpha; the update is scaled by alpha / rank. None: alpha = rank, as
                diffusers' DreamBooth-LoRA script sets it.
            train_text_encoder: also put adapters on the text encoder's attention projections
                (learning-rate group ``text_encoder_lora``; the UNet's is ``lora``).
            adapter: ``lora``; ``dora`` (a learned magnitude per output row, peft's
                ``use_dora``; exported for diffusers only); ``loha`` or ``lokr`` (LyCORIS's
                Hadamard and Kronecker forms; exported as ``lycoris.safetensors`` for
                ComfyUI, A1111 and sd-scripts, which diffusers cannot load). Not on FLUX.
        """
        alpha = check_lora_options(rank, alpha)
        check_adapter_kind(adapter)
        if adapter in ("loha", "lokr") and train_text_encoder:
            raise ValueError(
                f"adapter: {adapter} adapts the denoiser only here; set train_text_encoder: "
                "false, or use adapter: lora or dora for text-encoder adapters."
            )
        kwargs.setdefault("train_tokens", False)
        super().__init__(**kwargs)
        if adapter != "lora" and self.family.denoiser_name == "transformer":
            raise ValueError(
                f"adapter: {adapter} is for SD 1.x and SDXL here (FLUX's kohya file fuses "
                "plain LoRA layers only); use adapter: lora on FLUX."
            )
        self.rank, self.alpha, self.adapter = rank, alpha, adapter
        self.train_text_encoder = train_text_encoder
        targets = [(self.unet, self.family.lora_targets)]
        if train_text_encoder:  # the family's CLIP encoders (SDXL: both; FLUX: CLIP's only)
            targets += [(encoder, TEXT_ENCODER_TARGETS) for encoder in self.lora_text_encoders]
        add_seeded_adapters(targets, rank, alpha, self.seed, adapter)
        if train_text_encoder:
            # peft marks everything but its adapters as frozen, the concept vectors included.
            for tokens in self.encoder_concept_tokens:
                tokens.embedding.vectors.requires_grad_(bool(kwargs["train_tokens"]))
        # Lightning does not call train() when fitting starts: put the trained parts in train mode.
        self.train(self.training)

    @property
    def lora_text_encoders(self) -> list[nn.Module]:
        """The text encoders that take adapters: CLIP's (diffusers' FLUX loader reads no T5
        LoRA, so FLUX's T5 stays as it is)."""
        names = self.family.text_encoder_names
        return [getattr(self, n) for n in names if n in self.family.lora_text_encoder_names]

    def trained_components(self) -> tuple[nn.Module, ...]:
        encoders = tuple(self.lora_text_encoders) if self.train_text_encoder else ()
        return (self.unet, *encoders)

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = super().trainable_groups()
        groups["lora"] = lora_parameters(self.unet)
        if self.train_text_encoder:
            groups["text_encoder_lora"] = [
                p for encoder in self.lora_text_encoders for p in lora_parameters(encoder)
            ]
        return groups

    def _peft_states(self) -> dict[str, dict[str, Any]]:
        """Each adapted component's peft LoRA state dict, by component name (the text
        encoder's also when its adapters are frozen, as CLIF's stage 2 keeps stage 1's)."""
        return {name: peft_state(model) for name, model in self._adapted().items()}

    def _adapted(self) -> dict[str, nn.Module]:
        models: dict[str, nn.Module] = {self.family.denoiser_name: self.unet}
        for name, encoder in zip(self.family.text_encoder_names, self.text_encoders):
            if has_adapters(encoder):
                models[name] = encoder
        return models

    def export(self, folder: Path) -> list[Path]:
        """``pytorch_lora_weights.safetensors`` and one ``<token>.safetensors`` per concept."""
        folder.mkdir(parents=True, exist_ok=True)
        xl = len(self.text_encoders) > 1
        paths = {c.token: folder / f"{c.token}.safetensors" for c in self.concepts}
        unet = self.family.denoiser_name == "unet"
        prefixes = SDXL_KOHYA_PREFIXES if xl else KOHYA_PREFIXES
        layers = self.unet.config.layers_per_block if xl and unet else None  # SDXL: original
        if self.adapter in ("loha", "lokr"):  # no diffusers loader: LyCORIS's file only
            states, file = self._peft_states(), folder / LYCORIS_FILE
            lycoris = write_lycoris(states, self.rank, self.alpha, file, prefixes, layers)
            return [lycoris, *self.export_token_embeddings(paths)]
        lora_file = save_lora_layers(folder, self._adapted(), self.family.lora_writer)
        if self.adapter == "dora":  # the clients' DoRA differs from peft's (docs/DESIGN.md)
            return [lora_file, *self.export_token_embeddings(paths)]
        # The same adapters with kohya's keys and alphas, for A1111 / ComfyUI / kohya.
        alphas = {n: float(m.peft_config["default"].lora_alpha) for n, m in self._adapted().items()}
        kohya_file = folder / KOHYA_LORA
        if self.family.denoiser_name == "transformer":  # FLUX: its original fused layers
            kohya = write_kohya_flux_lora(self._peft_states(), alphas, kohya_file, self.unet)
            return [lora_file, kohya, *self.export_token_embeddings(paths)]
        kohya = write_kohya_lora(self._peft_states(), alphas, kohya_file, prefixes, layers)
        return [lora_file, kohya, *self.export_token_embeddings(paths)]

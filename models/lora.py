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
from typing import TYPE_CHECKING, Any

import torch
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from torch import nn

from models.base import PersonalizationModule
from models.components.external_formats import KOHYA_LORA, write_kohya_lora

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def load_lora(pipe: StableDiffusionPipeline, folder: str | Path) -> None:
    """Install an export into a diffusers pipeline with diffusers' own loaders."""
    folder = Path(folder)
    pipe.load_lora_weights(folder, weight_name=LORA_WEIGHTS)
    for token_file in sorted(folder.glob("*.safetensors")):
        if token_file.name not in (LORA_WEIGHTS, KOHYA_LORA):
            pipe.load_textual_inversion(token_file)


def _lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [p for name, p in module.named_parameters() if "lora_" in name and p.requires_grad]


class LoRA(PersonalizationModule):
    """Trains peft LoRA adapters (UNet attention; text encoder optional) and optionally tokens."""

    def __init__(
        self,
        rank: int = 4,
        alpha: float | None = None,
        train_text_encoder: bool = False,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            rank: LoRA rank r of every adapter (>= 1).
            alpha: LoRA alpha; the update is scaled by alpha / rank. None: alpha = rank, as
                diffusers' DreamBooth-LoRA script sets it.
            train_text_encoder: also put adapters on the text encoder's attention projections
                (learning-rate group ``text_encoder_lora``; the UNet's is ``lora``).
        """
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}; the recipe uses rank: 4.")
        if alpha is not None and alpha <= 0:
            raise ValueError(f"LoRA alpha must be > 0 (or null for alpha = rank), got {alpha}.")
        kwargs.setdefault("train_tokens", False)
        super().__init__(**kwargs)
        self.rank, self.alpha = rank, float(alpha if alpha is not None else rank)
        self.train_text_encoder = train_text_encoder
        # A's Gaussian init comes from our seed, not the global RNG: the same config starts
        # from the same adapters (and a resumed run continues the run it came from).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.unet.add_adapter(self._lora_config(UNET_TARGETS))
            if train_text_encoder:
                self.text_encoder.add_adapter(self._lora_config(TEXT_ENCODER_TARGETS))
        if train_text_encoder:
            # peft marks everything but its adapters as frozen, the concept vectors included.
            self.concept_tokens.embedding.vectors.requires_grad_(bool(kwargs["train_tokens"]))
        # Lightning does not call train() when fitting starts: put the trained parts in train mode.
        self.train(self.training)

    def _lora_config(self, targets: tuple[str, ...]) -> LoraConfig:
        # Gaussian A, zero B (diffusers' recipe): training starts from the unchanged model.
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            init_lora_weights="gaussian",
            target_modules=list(targets),
        )

    def trained_components(self) -> tuple[nn.Module, ...]:
        return (self.unet, self.text_encoder) if self.train_text_encoder else (self.unet,)

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = super().trainable_groups()
        groups["lora"] = _lora_parameters(self.unet)
        if self.train_text_encoder:
            groups["text_encoder_lora"] = _lora_parameters(self.text_encoder)
        return groups

    def _peft_states(self) -> dict[str, dict[str, Any]]:
        """Each adapted component's peft LoRA state dict, by component name."""
        models = {"unet": self.unet}
        if self.train_text_encoder:
            models["text_encoder"] = self.text_encoder
        # save_embedding_layers=False: nothing of ours targets embeddings, and "auto" would look
        # the base model up on the hub to compare vocabulary sizes.
        return {
            name: get_peft_model_state_dict(model, save_embedding_layers=False)
            for name, model in models.items()
        }

    @staticmethod
    def _diffusers_layers(peft_state: dict[str, Any]) -> dict[str, Any]:
        return convert_state_dict_to_diffusers(
            {k: v.detach().float().contiguous() for k, v in peft_state.items()}
        )

    def export(self, folder: Path) -> list[Path]:
        """``pytorch_lora_weights.safetensors`` and one ``<token>.safetensors`` per concept."""
        folder.mkdir(parents=True, exist_ok=True)
        peft_states = self._peft_states()
        layers: dict[str, Any] = {
            "unet_lora_layers": self._diffusers_layers(peft_states["unet"]),
            "unet_lora_adapter_metadata": self.unet.peft_config["default"].to_dict(),
        }
        if self.train_text_encoder:
            layers["text_encoder_lora_layers"] = self._diffusers_layers(peft_states["text_encoder"])
            layers["text_encoder_lora_adapter_metadata"] = self.text_encoder.peft_config[
                "default"
            ].to_dict()
        from diffusers import StableDiffusionPipeline  # its module loads when a run exports

        StableDiffusionPipeline.save_lora_weights(
            folder, weight_name=LORA_WEIGHTS, safe_serialization=True, **layers
        )
        # The same adapters with kohya's keys and alphas, for A1111 / ComfyUI / kohya.
        kohya = write_kohya_lora(peft_states, self.alpha, folder / KOHYA_LORA)
        paths = {c.token: folder / f"{c.token}.safetensors" for c in self.concepts}
        return [folder / LORA_WEIGHTS, kohya, *self.export_token_embeddings(paths)]

"""What a denoiser family provides: the seam between the personalization code and a backbone.

The base module, its text path, sampling, the callbacks and the losses ask the family (the
module's ``family``) rather than assuming one text encoder and a UNet called with
``encoder_hidden_states`` only. A family says how its components load, how token ids become the
denoiser's conditioning, how images become latents, how noise, timesteps and the training
target are drawn, how the denoiser is called, which batch data it needs, and which pipeline
samples it. One file per family (backbones/sd1.py, backbones/sdxl.py) subclasses
`BackboneFamily`; docs/DESIGN.md, "A backbone family", says what a new one must add.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from backbones.flow_matching_settings import FlowMatchingSettings
from pretrained.stable_diffusion import load_parts
from step.encoding import TextEncoding

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline

    from step.draws import SampleDraws

# The training objectives a family may use; a loss lists those its formula is written for.
DDPM_EPSILON = "ddpm_epsilon"
DDPM_V = "ddpm_v"
FLOW_MATCHING = "flow_matching"


@dataclass
class BackboneComponents:
    """What a family loads: tokenizers and text encoders in the family's order, VAE, denoiser
    and the training noise schedule."""

    tokenizers: list[Any]
    text_encoders: list[nn.Module]
    vae: AutoencoderKL
    unet: nn.Module
    noise_scheduler: DDPMScheduler
    extra: dict[str, Any] = field(default_factory=dict)


class BackboneFamily(ABC):
    """One denoiser family; stateless (the module holds the components)."""

    name: ClassVar[str]
    pipeline_class_names: ClassVar[tuple[str, ...]]  # model_index.json ``_class_name`` values
    tiny_name: ClassVar[str]  # built offline in code (pretrained/)
    random_name: ClassVar[str]  # the published shapes with random weights
    other_names: ClassVar[tuple[str, ...]] = ()  # further built-in models (a variant's tiny)
    # The module's attribute names of the text encoders and tokenizers, in the family's order.
    text_encoder_names: ClassVar[tuple[str, ...]]
    tokenizer_names: ClassVar[tuple[str, ...]]

    parts: ClassVar[dict[str, Any]]  # subfolder -> class with from_pretrained
    # The denoiser's name in the family's pipeline and LoRA files (``unet`` / ``transformer``)
    # and the pipeline class that writes its LoRA files.
    denoiser_name: ClassVar[str] = "unet"
    lora_writer: ClassVar[str] = "StableDiffusionPipeline"
    # The denoiser's LoRA target layers (diffusers' DreamBooth-LoRA scripts' defaults).
    lora_targets: ClassVar[tuple[str, ...]] = ("to_q", "to_k", "to_v", "to_out.0")
    # The text encoders LoRA adapts when asked (CLIP's; diffusers loads no T5 LoRA).
    lora_text_encoder_names: ClassVar[tuple[str, ...]] = ("text_encoder", "text_encoder_2")
    # The keys of a multi-encoder embedding file, one per text encoder.
    embedding_keys: ClassVar[tuple[str, ...]] = ()
    display_name: ClassVar[str]  # in loading errors

    def built_in_names(self) -> tuple[str, ...]:
        """The model names built offline in code for this family."""
        return (self.tiny_name, self.random_name, *self.other_names)

    def load(self, path: str, revision: str | None, variant: str | None) -> BackboneComponents:
        """The components from a hub id, folder or built-in name (``parts``' subfolders)."""
        loaded = load_parts(path, self.parts, revision, variant, self.display_name, self.tiny_name)
        return BackboneComponents(
            tokenizers=[loaded[name] for name in self.tokenizer_names],
            text_encoders=[loaded[name] for name in self.text_encoder_names],
            vae=loaded["vae"],
            unet=loaded[self.denoiser_name],
            noise_scheduler=loaded["scheduler"],
        )

    def configured(self, settings: Any) -> BackboneFamily:
        """This family with the module's ``flow_matching`` settings: a DDPM family has no use
        for them, so changed ones are refused rather than silently ignored."""
        if settings != FlowMatchingSettings():
            raise ValueError(
                f"model.init_args.flow_matching is set, but the {self.name} backbone trains "
                "with DDPM noise prediction; leave flow_matching out, or use a flow-matching "
                "model (backbone flux)."
            )
        return self

    def check_components(self, components: BackboneComponents) -> None:
        """Refuse settings the loaded model cannot take (none here)."""
        return None

    @abstractmethod
    def encode_ids(
        self,
        encoders: list[nn.Module],
        input_ids: torch.Tensor,
        pad_ids: list[int],
        end_id: int,
        tokenizers: list[Any] | None = None,
    ) -> TextEncoding:
        """Token ids (B, L) of the first tokenizer -> the denoiser's text conditioning.
        ``pad_ids``: each tokenizer's padding id (the ids are re-padded for encoder k);
        ``end_id``: the tokenizer's end-of-text id (the encoders' configs may say otherwise:
        SD's and SDXL's CLIP configs keep a legacy 2); ``tokenizers``: the family's, for a
        family whose encoders do not share the first one's vocabulary (FLUX's T5)."""

    def objective(self, scheduler: DDPMScheduler) -> str:
        """The training objective this schedule uses (DDPM epsilon or v here)."""
        return DDPM_V if scheduler.config.prediction_type == "v_prediction" else DDPM_EPSILON

    def draw_timesteps(self, draws: SampleDraws, scheduler: DDPMScheduler) -> torch.Tensor:
        """Each sample's training timestep (DDPM: uniform integers)."""
        return draws.randint(scheduler.config.num_train_timesteps)

    def noised_and_target(
        self,
        scheduler: DDPMScheduler,
        latents: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(noisy latents, the target the denoiser's output is compared with)."""
        noisy = scheduler.add_noise(latents, noise, timesteps)
        if scheduler.config.prediction_type == "v_prediction":
            return noisy, scheduler.get_velocity(latents, noise, timesteps)
        return noisy, noise

    def loss_weights(self, scheduler: Any, timesteps: torch.Tensor) -> torch.Tensor | None:
        """Each sample's weight in the denoising loss (None: all 1, DDPM's plain MSE)."""
        return None

    def run_denoiser(
        self,
        denoiser: nn.Module,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        states: torch.Tensor,
        added: dict[str, Any],
    ) -> torch.Tensor:
        """One denoiser call on (B, C, h, w) latents; the prediction in the same layout."""
        return denoiser(noisy_latents, timesteps, encoder_hidden_states=states, **added).sample

    # ----- where the denoiser reads text (analysis callbacks) ---------------------------------
    def attention_layers(self, denoiser: nn.Module) -> dict[str, nn.Module]:
        """The layers whose attention maps image positions to text tokens: the UNet's
        cross-attentions."""
        from diffusers.models.attention_processor import Attention

        return {
            name: module
            for name, module in denoiser.named_modules()
            if isinstance(module, Attention) and module.is_cross_attention
        }

    def attention_sizes(self, args: tuple, kwargs: dict[str, Any]) -> tuple[int, int, int | None]:
        """From one denoiser call's arguments: its latent grid (h, w) and, where text and image
        share one attention, the text length (None: cross-attention, all keys are text)."""
        sample = args[0] if args else kwargs["sample"]
        return int(sample.shape[-2]), int(sample.shape[-1]), None

    def text_attention(self, probs: torch.Tensor, text_length: int | None) -> torch.Tensor:
        """(N, image queries, text keys) from a layer's head-averaged probabilities; each
        image position's row a distribution over the text tokens."""
        return probs

    def attended_ids(self, input_ids: torch.Tensor, tokenizers: list[Any]) -> torch.Tensor:
        """The token ids the denoiser's text keys stand for, from the first tokenizer's ids."""
        return input_ids

    def attended_tokenizer(self, tokenizers: list[Any]) -> Any:
        """The tokenizer of those ids (where a word's tokens are looked up)."""
        return tokenizers[0]

    def default_resolution(self, denoiser: nn.Module, vae: AutoencoderKL) -> int:
        """The pixel side the model was trained at (SD: the UNet's latent side x the VAE's)."""
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        return denoiser.config.sample_size * factor

    def latent_channels(self, denoiser: nn.Module) -> int:
        """The VAE latent channels the denoiser reads (a replacement VAE must match)."""
        return denoiser.config.in_channels

    def pixel_multiple(self, vae_scale_factor: int) -> int:
        """Image sides must be multiples of this (the VAE's factor; more where latents pack)."""
        return vae_scale_factor

    def clean_estimate(
        self,
        scheduler: Any,
        noisy: torch.Tensor,
        prediction: torch.Tensor,
        timesteps: torch.Tensor,
    ) -> torch.Tensor:
        """The denoiser's estimate of the clean latents x0 from one prediction (DDPM:
        (x_t - sqrt(1 - a) eps) / sqrt(a), or sqrt(a) x_t - sqrt(1 - a) v)."""
        alpha = scheduler.alphas_cumprod.to(noisy.device)[timesteps.long()].float()
        alpha = alpha.view(-1, *[1] * (noisy.dim() - 1))
        if scheduler.config.prediction_type == "v_prediction":
            return alpha.sqrt() * noisy - (1 - alpha).sqrt() * prediction
        return (noisy - (1 - alpha).sqrt() * prediction) / alpha.sqrt()

    def unscale_latents(self, vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
        """The inverse of `scale_latents`: what the VAE decodes."""
        latents = latents / vae.config.scaling_factor
        shift = getattr(vae.config, "shift_factor", None)
        return latents + shift if shift else latents

    def scale_latents(self, vae: AutoencoderKL, sample: torch.Tensor) -> torch.Tensor:
        """VAE latents as the denoiser sees them: (sample - shift) * scale."""
        shift = getattr(vae.config, "shift_factor", None)
        if shift:
            sample = sample - shift
        return sample * vae.config.scaling_factor

    def batch_keys(self) -> frozenset[str]:
        """Batch data the family's conditioning needs beyond the base keys."""
        return frozenset()

    def time_ids(
        self,
        batch: dict[str, Any] | None,
        rows: int,
        resolution: int | tuple[int, int],
        device: torch.device,
    ) -> torch.Tensor | None:
        """Per-row size conditioning of the denoiser (None: the family has none);
        ``resolution``: the training size, a side or (height, width)."""
        return None

    def added_conditioning(
        self, text: TextEncoding | torch.Tensor, time_ids: torch.Tensor | None
    ) -> dict[str, Any]:
        """Keyword arguments of the denoiser call beside latents, timesteps and the text
        states (SD 1.x: none)."""
        return {}

    @abstractmethod
    def pipeline(self, module: Any, text_encoders: list[nn.Module]) -> DiffusionPipeline:
        """A diffusers pipeline over the module's live components with DDIM (sampling and
        exports agree on it); ``text_encoders`` replace the module's own (exports)."""

    def prompt_kwargs(
        self, positive: TextEncoding, negative: TextEncoding, resolution: int
    ) -> dict[str, Any]:
        """The pipeline call's precomputed prompt arguments (the states; a family with pooled
        text adds it)."""
        return {
            "prompt_embeds": positive.conditioning,
            "negative_prompt_embeds": negative.conditioning,
        }


def ddim_for(module: Any) -> Any:
    """DDIM over the module's training schedule: the sampler of every family's pipeline."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(module.noise_scheduler.config)


def family_error(
    family: BackboneFamily, what: str, supported: frozenset[str] | set[str], why: str = ""
) -> str:
    """One line for a part that does not support this family (``why``: the reason, where the
    family cannot have it rather than not yet)."""
    names = ", ".join(sorted(supported))
    reason = f" ({why})" if why else ""
    return (
        f"{what} supports the {names} backbone(s), not {family.name}{reason}: use a model of "
        f"those families (model.init_args.pretrained_model_name_or_path / backbone), or "
        "leave this part out."
    )

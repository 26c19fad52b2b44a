"""FLUX.1 (dev, schnell): CLIP's pooled text and T5's token states into a flow-matching
transformer over packed latents.

As diffusers' FluxPipeline and its FLUX training scripts condition the transformer: T5's last
hidden states (``encoder_hidden_states``, 512 tokens for dev), CLIP ViT-L's pooled output
(``pooled_projections``), zero text position ids, the image position ids of the 2x2-packed
latents, the timestep as sigma (t / 1000) and, for the guidance-distilled dev, the guidance
value (``flow_matching.guidance_scale``). Latents are the 16-channel VAE's, shifted and scaled;
the prediction is unpacked back to (B, 16, h, w), so masks, losses and callbacks see latents as
on every other family.

The two tokenizers do not share a vocabulary. The text path's ids are CLIP's (concept tokens,
end-of-text positions and the losses' requests are all read there); T5 reads the same prompt as
CLIP's tokenizer gives it back (its decoding: lower case, single spaces), with the concept tokens
added to T5 under the same names. Ids past CLIP's tokenizer (MLM's ``[MASK]``) are left out of
T5's text: the mask is CLIP's, the contextualizer's side.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

from backbones.base import BackboneComponents
from backbones.flow_matching import FlowMatchingFamily
from backbones.flow_matching_settings import DEFAULT_TRAINING_GUIDANCE
from pretrained.flux_random import FLUX_RANDOM_NAME
from pretrained.tiny_flux import TINY_FLUX_NAME, TINY_FLUX_SCHNELL_NAME
from step.encoding import TextEncoding

FLUX_PARTS: dict[str, Any] = {
    "tokenizer": CLIPTokenizer,
    "tokenizer_2": T5TokenizerFast,
    "text_encoder": CLIPTextModel,
    "text_encoder_2": T5EncoderModel,
    "vae": AutoencoderKL,
    "transformer": FluxTransformer2DModel,
    "scheduler": FlowMatchEulerDiscreteScheduler,
}
PACK = 2  # latents are packed in 2x2 patches
# CLIP's decoding writes "dog , cat": the prompt as typed has no space there.
_SPACE_BEFORE_PUNCTUATION = re.compile(r" ([,.!?;:])")


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C), diffusers' FLUX packing."""
    from diffusers import FluxPipeline

    batch, channels, height, width = latents.shape
    return FluxPipeline._pack_latents(latents, batch, channels, height, width)


def unpack_latents(packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of `pack_latents` for latents of side (height, width)."""
    batch, _, features = packed.shape
    channels = features // (PACK * PACK)
    grid = packed.view(batch, height // PACK, width // PACK, channels, PACK, PACK)
    return grid.permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, height, width)


def latent_image_ids(height: int, width: int, device: torch.device, dtype: torch.dtype) -> Any:
    """Each packed token's (0, row, column) position, as FluxPipeline makes them."""
    from diffusers import FluxPipeline

    return FluxPipeline._prepare_latent_image_ids(1, height // PACK, width // PACK, device, dtype)


def t5_ids(
    clip_ids: torch.Tensor, clip_tokenizer: Any, t5_tokenizer: Any
) -> torch.Tensor:
    """T5's ids of the prompts that CLIP's ids (B, L) spell (see the module docstring)."""
    known = clip_ids.masked_fill(clip_ids >= len(clip_tokenizer), clip_tokenizer.eos_token_id)
    texts = clip_tokenizer.batch_decode(known.tolist(), skip_special_tokens=True)
    return t5_tokenizer(
        [_SPACE_BEFORE_PUNCTUATION.sub(r"\1", " ".join(text.split())) for text in texts],
        padding="max_length",
        max_length=t5_tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(clip_ids.device)


class Flux(FlowMatchingFamily):
    name: ClassVar[str] = "flux"
    pipeline_class_names: ClassVar[tuple[str, ...]] = ("FluxPipeline",)
    tiny_name: ClassVar[str] = TINY_FLUX_NAME
    random_name: ClassVar[str] = FLUX_RANDOM_NAME
    other_names: ClassVar[tuple[str, ...]] = (TINY_FLUX_SCHNELL_NAME,)
    text_encoder_names: ClassVar[tuple[str, ...]] = ("text_encoder", "text_encoder_2")
    tokenizer_names: ClassVar[tuple[str, ...]] = ("tokenizer", "tokenizer_2")
    parts: ClassVar[dict[str, Any]] = FLUX_PARTS
    display_name: ClassVar[str] = "FLUX.1"
    denoiser_name: ClassVar[str] = "transformer"
    lora_writer: ClassVar[str] = "FluxPipeline"
    # diffusers' train_dreambooth_lora_flux.py default: the joint attention's image and text
    # projections and both feed-forwards of the double-stream blocks (single-stream blocks'
    # attention matches ``attn.to_*`` too).
    lora_targets: ClassVar[tuple[str, ...]] = (
        "attn.to_k",
        "attn.to_q",
        "attn.to_v",
        "attn.to_out.0",
        "attn.add_k_proj",
        "attn.add_q_proj",
        "attn.add_v_proj",
        "attn.to_add_out",
        "ff.net.0.proj",
        "ff.net.2",
        "ff_context.net.0.proj",
        "ff_context.net.2",
    )
    lora_text_encoder_names: ClassVar[tuple[str, ...]] = ("text_encoder",)
    embedding_keys: ClassVar[tuple[str, ...]] = ("clip_l", "t5")  # diffusers' advanced script

    def check_components(self, components: BackboneComponents) -> None:
        guided = components.unet.config.guidance_embeds
        if not guided and self.settings.guidance_scale is not None:
            raise ValueError(
                "model.init_args.flow_matching.guidance_scale is set, but this FLUX model has "
                "no guidance input (FLUX.1-schnell is timestep-distilled); leave it out, or "
                "train FLUX.1-dev."
            )

    def training_guidance(self) -> float:
        scale = self.settings.guidance_scale
        return DEFAULT_TRAINING_GUIDANCE if scale is None else scale

    def encode_ids(
        self,
        encoders: list[nn.Module],
        input_ids: torch.Tensor,
        pad_ids: list[int],
        end_id: int,
        tokenizers: list[Any] | None = None,
    ) -> TextEncoding:
        """T5's last hidden states as the conditioning; CLIP's ``pooler_output`` (as the
        pipeline takes it) as ``text_embeds``; CLIP's last layer as ``clip_states`` and its
        state at the real end-of-text as ``clip_pooled``."""
        if tokenizers is None:
            raise ValueError("FLUX's T5 reads its own ids: pass the family's tokenizers.")
        clip, t5 = encoders
        clip_output = clip(input_ids, output_hidden_states=False)
        t5_states = t5(t5_ids(input_ids, tokenizers[0], tokenizers[1]))[0]
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        ends = (input_ids == end_id).int().argmax(dim=-1)
        return TextEncoding(
            t5_states,
            input_ids,
            text_embeds=clip_output.pooler_output,
            clip_pooled=clip_output.last_hidden_state[rows, ends],
            clip_states=clip_output.last_hidden_state,
            states_follow_ids=False,
        )

    def added_conditioning(
        self, text: TextEncoding | torch.Tensor, time_ids: torch.Tensor | None
    ) -> dict[str, Any]:
        if not isinstance(text, TextEncoding) or text.text_embeds is None:
            raise ValueError(
                "FLUX's transformer needs CLIP's pooled text: pass the TextEncoding itself "
                "(not its states) to predict_noise."
            )
        return {"pooled_projections": text.text_embeds}

    def run_denoiser(
        self,
        denoiser: nn.Module,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        states: torch.Tensor,
        added: dict[str, Any],
    ) -> torch.Tensor:
        """Pack, call the transformer with sigma as its timestep, unpack."""
        batch, _, height, width = noisy_latents.shape
        dtype = noisy_latents.dtype
        guidance = None
        if denoiser.config.guidance_embeds:
            guidance = torch.full((batch,), self.training_guidance(), device=states.device)
        sigma = (timesteps.float() / 1000.0).to(dtype)  # the pipeline's and scripts' t / 1000
        output = denoiser(
            hidden_states=pack_latents(noisy_latents),
            timestep=sigma,
            guidance=guidance,
            pooled_projections=added["pooled_projections"],
            encoder_hidden_states=states,
            txt_ids=torch.zeros(states.shape[1], 3, device=states.device, dtype=dtype),
            img_ids=latent_image_ids(height, width, noisy_latents.device, dtype),
            return_dict=False,
        )[0]
        return unpack_latents(output, height, width)

    def attention_layers(self, denoiser: nn.Module) -> dict[str, nn.Module]:
        """Every joint attention (double-stream and single-stream blocks): text and image
        tokens attend to each other in one softmax."""
        return {
            name: module
            for name, module in denoiser.named_modules()
            if name.endswith(".attn") and hasattr(module, "processor")
        }

    def attention_sizes(self, args: tuple, kwargs: dict[str, Any]) -> tuple[int, int, int | None]:
        """The packed grid from the image ids; the text length from T5's states."""
        ids = kwargs["img_ids"]
        height, width = int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1
        return height, width, int(kwargs["encoder_hidden_states"].shape[1])

    def text_attention(self, probs: torch.Tensor, text_length: int | None) -> torch.Tensor:
        """The image queries' attention to the text keys (the sequence is text, then image),
        renormalised over the text: how an image position divides what it takes from text."""
        assert text_length is not None
        part = probs[:, text_length:, :text_length]
        return part / part.sum(dim=-1, keepdim=True).clamp(min=1e-12)

    def attended_ids(self, input_ids: torch.Tensor, tokenizers: list[Any]) -> torch.Tensor:
        return t5_ids(input_ids, tokenizers[0], tokenizers[1])

    def attended_tokenizer(self, tokenizers: list[Any]) -> Any:
        return tokenizers[1]

    def default_resolution(self, denoiser: nn.Module, vae: AutoencoderKL) -> int:
        """The VAE's training side (1024 for FLUX.1): the transformer has no fixed size."""
        return int(vae.config.sample_size)

    def latent_channels(self, denoiser: nn.Module) -> int:
        return denoiser.config.in_channels // (PACK * PACK)

    def pixel_multiple(self, vae_scale_factor: int) -> int:
        return vae_scale_factor * PACK

    def pipeline(self, module: Any, text_encoders: list[nn.Module]) -> Any:
        """FluxPipeline with the flow-matching Euler sampler of the model's own schedule."""
        from diffusers import FluxPipeline

        return FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler.from_config(module.noise_scheduler.config),
            vae=module.vae,
            text_encoder=text_encoders[0],
            tokenizer=module.tokenizer,
            text_encoder_2=text_encoders[1],
            tokenizer_2=module.tokenizer_2,
            transformer=module.unet,
        )

    def prompt_kwargs(
        self, positive: TextEncoding, negative: TextEncoding, resolution: int
    ) -> dict[str, Any]:
        """FLUX.1 is guidance-distilled: the pipeline's ``guidance_scale`` is the embedded
        guidance, and no negative prompt is run (true CFG is off at its scale 1)."""
        return {
            "prompt_embeds": positive.hidden_states,
            "pooled_prompt_embeds": positive.text_embeds,
        }

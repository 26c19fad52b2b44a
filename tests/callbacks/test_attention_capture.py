"""AttentionCapture: distributions per pixel, the right pixels, and no effect on generation."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from torch import nn

from callbacks.attention_capture import AttentionCapture, attention_probabilities
from core.concept import ConceptSpec
from models import XTI, CustomDiffusion, LoRA, TextualInversion
from models.base import PersonalizationModule

PROMPTS = ["a <v1> toy on the beach", "a photo of a <v1> toy"]
STEPS = 3


def _textual_inversion() -> PersonalizationModule:
    return TextualInversion(concepts=[ConceptSpec("<v1>", "toy")], num_vectors=2)


def _custom_diffusion() -> PersonalizationModule:
    module = CustomDiffusion(concepts=[ConceptSpec("<v1>", "toy")])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # trained-looking K/V copies, so they differ from the layer's own K/V
        for name, param in module.unet.named_parameters():
            if "_custom_diffusion" in name:
                param.add_(0.3 * torch.randn(param.shape, generator=generator))
    return module


def _lora() -> PersonalizationModule:
    """The LoRA baseline (peft-wrapped projections), its B matrices made non-zero."""
    module = LoRA(concepts=[ConceptSpec("<v1>", "toy")])
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in module.unet.named_parameters():
            if "lora_B" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    return module


def _xti() -> PersonalizationModule:
    """XTI: its per-layer processors give each layer its own (here random) concept vectors."""
    module = XTI(concepts=[ConceptSpec("<v1>", "toy")])
    with torch.no_grad():
        vectors = module.concept_tokens.embedding.vectors
        vectors.copy_(torch.randn(vectors.shape, generator=torch.Generator().manual_seed(2)))
    return module


def _classic_processor() -> PersonalizationModule:
    """The pre-2.0 processor: probabilities come from get_attention_scores' softmax."""
    module = TextualInversion(concepts=[ConceptSpec("<v1>", "toy")])
    module.unet.set_attn_processor(AttnProcessor())
    return module


BUILDERS: dict[str, Callable[[], PersonalizationModule]] = {
    "textual_inversion": _textual_inversion,
    "custom_diffusion": _custom_diffusion,
    "lora": _lora,
    "xti": _xti,
    "classic_processor": _classic_processor,
}


def _generate(module: PersonalizationModule) -> torch.Tensor:
    return module.generate(PROMPTS, seed=3, num_inference_steps=STEPS, guidance_scale=6.0)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_capture_leaves_the_image_bitwise_unchanged_and_maps_are_distributions(
    name: str, tiny_sd_path: object
) -> None:
    module = BUILDERS[name]()
    processors = dict(module.unet.attn_processors)
    plain = _generate(module)
    with AttentionCapture(module.unet, resolution=16) as capture:
        captured = _generate(module)
    assert torch.equal(plain, captured)
    # 4 cross-attention layers in the tiny UNet, 3 steps; 2 prompts with guidance: 4 rows.
    assert capture.calls == 4 * STEPS
    maps = capture.maps
    assert maps.shape == (4, module.tokenizer.model_max_length, 16, 16)
    torch.testing.assert_close(maps.sum(dim=1), torch.ones(4, 16, 16), atol=1e-5, rtol=0)
    assert (maps >= 0).all()
    # Nothing was left behind: the same processor objects, no hooks.
    assert all(processors[k] is p for k, p in module.unet.attn_processors.items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in module.unet.modules())
    assert torch.equal(_generate(module), plain)


def test_custom_diffusion_maps_come_from_its_own_key_copies(tiny_sd_path: object) -> None:
    """Recomputing from the layer's to_k would give other maps than the processor's K copy."""
    module = _custom_diffusion()
    layers = module.unet.modules()
    layer = next(m for m in layers if isinstance(m, Attention) and m.is_cross_attention)
    hidden = torch.randn(1, 16 * 16, layer.to_q.in_features)
    text = module.encode_text([PROMPTS[0]]).hidden_states
    seen: list[torch.Tensor] = []

    class Probe(nn.Module):
        """Calls the one layer as the UNet would, on a 16x16 latent."""

        def __init__(self) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, sample: torch.Tensor) -> torch.Tensor:
            return self.layer(hidden, encoder_hidden_states=text)

    probe = Probe()
    with torch.no_grad(), AttentionCapture(probe, resolution=16) as capture:
        probe(torch.zeros(1, 4, 16, 16))
        seen.append(capture.maps)
        processor = layer.processor
        query = layer.head_to_batch_dim(layer.to_q(hidden))
        own_key = layer.head_to_batch_dim(processor.to_k_custom_diffusion(text))
        layer_key = layer.head_to_batch_dim(layer.to_k(text))
    # The processor detaches the start token's K but keeps its value, so it is the same key.
    expected = attention_probabilities(query, own_key).reshape(1, layer.heads, 256, -1).mean(1)
    other = attention_probabilities(query, layer_key).reshape(1, layer.heads, 256, -1).mean(1)
    captured = seen[0].flatten(2).transpose(1, 2)
    torch.testing.assert_close(captured, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(captured, other, atol=1e-3)


class _BandUNet(nn.Module):
    """A one-layer stand-in UNet: pixels in the top band hold feature 0, the rest feature 1."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.attn = Attention(
            query_dim=channels, cross_attention_dim=channels, heads=1, dim_head=channels
        )
        self.attn.set_processor(AttnProcessor2_0())
        with torch.no_grad():
            for projection in (self.attn.to_q, self.attn.to_k):
                projection.weight.copy_(torch.eye(channels))

    def forward(self, sample: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = sample.shape
        flat = sample.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        return self.attn(flat, encoder_hidden_states=text)


def test_maps_land_on_the_right_pixels_of_a_non_square_latent() -> None:
    unet = _BandUNet()
    sample = torch.zeros(1, 4, 8, 4)  # 8 rows, 4 columns: a transposed map cannot pass
    sample[:, 0, :2] = 10.0  # rows 0-1: feature 0
    sample[:, 1, 2:] = 10.0  # rows 2-7: feature 1
    text = torch.zeros(1, 3, 4)
    text[0, 0, 0] = 10.0  # token 0 matches feature 0
    text[0, 1, 1] = 10.0  # token 1 matches feature 1 (token 2 matches nothing)
    with torch.no_grad(), AttentionCapture(unet, resolution=8) as capture:
        unet(sample, text)
    maps = capture.maps[0]  # (3 tokens, 8, 8): columns stretched from 4 to 8
    assert maps.shape == (3, 8, 8)
    assert (maps[0, :2] > 0.95).all() and (maps[0, 3:] < 0.05).all()
    assert (maps[1, 3:] > 0.95).all() and (maps[1, :2] < 0.05).all()


def test_attention_probabilities_reproduce_scaled_dot_product_attention() -> None:
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 3, 5, 8, generator=generator) for _ in range(3))
    mask = torch.rand(2, 1, 5, 5, generator=generator) > 0.3
    mask[..., 0] = True  # every query keeps at least one key
    for attn_mask, scale in ((None, None), (mask, 0.2), (torch.randn(2, 1, 5, 5), None)):
        probs = attention_probabilities(query, key, attn_mask, scale)
        expected = F.scaled_dot_product_attention(query, key, value, attn_mask, scale=scale)
        torch.testing.assert_close(probs @ value, expected, atol=1e-5, rtol=1e-4)

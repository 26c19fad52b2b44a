"""IP-Adapter's parts: the image projection (IP-Adapter-Plus's Perceiver resampler) and the
decoupled image cross-attention, with the weight layout its published checkpoints use.

ACCORD (Sec. 4.4) says its IP-Adapter maps CLIP image features to 16 tokens "using a Q-former";
the published form of that is IP-Adapter-Plus's resampler: 16 learned queries that attend, in
4 Perceiver blocks, to the CLIP image encoder's penultimate hidden states (all patch tokens),
then a projection to the cross-attention width and a LayerNorm. Written here in the original
repository's layout (``latents``, ``proj_in``, ``layers.i.0`` attention with ``norm1`` /
``norm2`` / ``to_q`` / ``to_kv`` / ``to_out``, ``layers.i.1`` feed-forward, ``proj_out``,
``norm_out``), because that is the layout diffusers' ``load_ip_adapter`` converts: 4 blocks and
64-wide heads are what its converter assumes, so both are fixed.

The decoupled attention is diffusers' own ``IPAdapterAttnProcessor2_0`` (the processor
``load_ip_adapter`` installs), so training and an exported pipeline run the same attention:
softmax(Q K^T) V + scale * softmax(Q K_ip^T) V_ip, with K_ip / V_ip new projections of the image
tokens beside every cross-attention layer, started from that layer's text K / V (IP-Adapter's
initialisation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
from torch import nn

RESAMPLER_DEPTH = 4  # diffusers' converter builds 4 blocks whatever the checkpoint holds
HEAD_DIM = 64  # ... and reads the head count as to_q's width / 64


class PerceiverAttention(nn.Module):
    """The queries attend to [image features; queries] (both LayerNormed), no biases."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * HEAD_DIM
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)
        self.to_q = nn.Linear(width, inner, bias=False)
        self.to_kv = nn.Linear(width, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, width, bias=False)

    def forward(self, features: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        features, queries = self.norm1(features), self.norm2(queries)
        key, value = self.to_kv(torch.cat([features, queries], dim=1)).chunk(2, dim=-1)

        def split(x: torch.Tensor) -> torch.Tensor:  # (B, N, H * d) -> (B, H, N, d)
            return x.unflatten(-1, (self.heads, HEAD_DIM)).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.to_q(queries)), split(key), split(value))
        return self.to_out(out.transpose(1, 2).flatten(2))


def feed_forward(width: int, mult: int = 4) -> nn.Sequential:
    """LayerNorm, Linear, GELU, Linear (no biases): the resampler block's MLP."""
    return nn.Sequential(
        nn.LayerNorm(width),
        nn.Linear(width, width * mult, bias=False),
        nn.GELU(),
        nn.Linear(width * mult, width, bias=False),
    )


class Resampler(nn.Module):
    """CLIP hidden states (B, N, E) -> ``num_tokens`` image tokens (B, num_tokens, D)."""

    def __init__(self, feature_dim: int, output_dim: int, width: int, num_tokens: int = 16) -> None:
        super().__init__()
        if width % HEAD_DIM:
            raise ValueError(f"the resampler width must be a multiple of {HEAD_DIM}, not {width}.")
        self.num_tokens, self.output_dim, self.width = num_tokens, output_dim, width
        self.latents = nn.Parameter(torch.randn(1, num_tokens, width) / width**0.5)
        self.proj_in = nn.Linear(feature_dim, width)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(width, width // HEAD_DIM), feed_forward(width)])
            for _ in range(RESAMPLER_DEPTH)
        )
        self.proj_out = nn.Linear(width, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = self.proj_in(features)
        queries = self.latents.expand(features.shape[0], -1, -1)
        for attention, mlp in self.layers:  # type: ignore[misc]
            queries = attention(features, queries) + queries
            queries = mlp(queries) + queries
        return self.norm_out(self.proj_out(queries))


def cross_attention_widths(unet: nn.Module) -> dict[str, int]:
    """Each cross-attention processor's name (``...attn2.processor``) -> its layer's width."""
    from diffusers.models.attention_processor import Attention

    widths = {}
    for name, module in unet.named_modules():
        if isinstance(module, Attention) and module.is_cross_attention:
            widths[f"{name}.processor"] = module.to_q.out_features
    return widths


def install_ip_processors(
    unet: nn.Module, num_tokens: int, scale: float = 1.0
) -> dict[str, IPAdapterAttnProcessor2_0]:
    """Put diffusers' IP-Adapter processor on every cross-attention layer, K_ip / V_ip copied
    from the layer's text K / V in fp32 (IP-Adapter's start); returns them by processor name."""
    from diffusers.models.attention_processor import Attention

    installed = {}
    for name, module in unet.named_modules():
        if not (isinstance(module, Attention) and module.is_cross_attention):
            continue
        width, context = module.to_q.out_features, module.to_k.in_features
        processor = IPAdapterAttnProcessor2_0(width, context, num_tokens=(num_tokens,), scale=scale)
        with torch.no_grad():
            processor.to_k_ip[0].weight.copy_(module.to_k.weight.float())
            processor.to_v_ip[0].weight.copy_(module.to_v.weight.float())
        module.set_processor(processor.to(module.to_q.weight.device))
        installed[f"{name}.processor"] = processor
    return installed


def ip_attention_state(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The new K / V in IP-Adapter's checkpoint keys: ``{i}.to_k_ip.weight`` where i is the
    processor's position among all the UNet's attention processors (self- and cross-), the
    original repository's numbering (cross-attentions are 1, 3, 5, ... on SD)."""
    state = {}
    for index, (name, processor) in enumerate(unet.attn_processors.items()):
        if isinstance(processor, IPAdapterAttnProcessor2_0):
            if len(processor.to_k_ip) != 1:
                raise ValueError(f"{name} holds {len(processor.to_k_ip)} IP-Adapters, not one.")
            state[f"{index}.to_k_ip.weight"] = processor.to_k_ip[0].weight
            state[f"{index}.to_v_ip.weight"] = processor.to_v_ip[0].weight
    return state

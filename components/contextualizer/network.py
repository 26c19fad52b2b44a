"""The MLM contextualizer psi of the diverse-context paper (Sec. 4.1, Algorithm 1).

CLIP's text encoder is causal and trained only contrastively, so it cannot predict a masked
token; psi adds that ability on top of it: 4 bidirectional transformer layers (4 heads,
residual + post-LN) over the encoder's last hidden state, then Linear(hidden -> vocab + 1).
The extra class is the ``[MASK]`` id itself (it sits right after the base vocabulary), so the
head covers every id the masked input can hold; it is never a target.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ContextualizerConfig:
    """Shape of psi; ``hidden_size`` and ``vocab_size`` come from the text encoder."""

    hidden_size: int
    vocab_size: int
    num_layers: int = 4
    num_heads: int = 4
    feedforward_size: int | None = None  # None: 4 x hidden, as in BERT and CLIP
    dropout: float = 0.1

    def to_dict(self) -> dict[str, int | float | None]:
        return asdict(self)


class Contextualizer(nn.Module):
    """Hidden states (B, L, D) -> logits (B, L, vocab + 1), or (N, vocab + 1) at N positions."""

    def __init__(self, config: ContextualizerConfig) -> None:
        super().__init__()
        if config.hidden_size % config.num_heads:
            raise ValueError(
                f"hidden_size {config.hidden_size} is not divisible by num_heads "
                f"{config.num_heads}; pick a head count that divides it."
            )
        self.config = config
        layer = nn.TransformerEncoderLayer(
            d_model=config.hidden_size,
            nhead=config.num_heads,
            dim_feedforward=config.feedforward_size or 4 * config.hidden_size,
            dropout=config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=False,  # post-LN: x = LN(x + sublayer(x))
        )
        self.layers = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        self.head = nn.Linear(config.hidden_size, config.vocab_size + 1)

    def forward(
        self,
        hidden_states: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """padding_mask (B, L): True where a position is padding and must not be attended to.

        positions (B, L) bool: score only there, returning (N, vocab + 1) in row-major order.
        The vocabulary-wide head is most of psi's cost, and MLM reads ~15% of the positions.
        """
        bias = None
        if padding_mask is not None:  # additive attention bias: padding keys get -inf
            bias = torch.zeros(
                padding_mask.shape, dtype=hidden_states.dtype, device=padding_mask.device
            )
            bias = bias.masked_fill(padding_mask, float("-inf"))[:, None, None, :]
        contextual = hidden_states
        for layer in self.layers.layers:
            contextual = post_ln_layer(layer, contextual, bias, self.config.dropout, self.training)
        if positions is not None:
            contextual = contextual[positions]
        return self.head(contextual)


def post_ln_layer(
    layer: nn.TransformerEncoderLayer,
    x: torch.Tensor,
    attention_bias: torch.Tensor | None,
    dropout: float,
    training: bool,
) -> torch.Tensor:
    """What ``layer(x, src_key_padding_mask=...)`` computes (post-LN, GELU, batch first), in a
    few fused calls on the layer's own weights. psi runs on every MLM step with gradient
    flowing through it, where nn.MultiheadAttention's general path costs twice this in
    per-call overhead on small widths; the weights (and checkpoints) stay nn's."""
    batch, length, width = x.shape
    attention = layer.self_attn
    heads = attention.num_heads
    p = dropout if training else 0.0
    qkv = F.linear(x, attention.in_proj_weight, attention.in_proj_bias)
    q, k, v = qkv.view(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_bias, dropout_p=p)
    mixed = mixed.transpose(1, 2).reshape(batch, length, width)
    mixed = F.linear(mixed, attention.out_proj.weight, attention.out_proj.bias)
    x = layer.norm1(x + F.dropout(mixed, p, training))
    hidden = F.dropout(F.gelu(layer.linear1(x)), p, training)
    return layer.norm2(x + F.dropout(layer.linear2(hidden), p, training))


def padding_after_eos(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """True after the first end-of-text token of each row (CLIP pads with end-of-text too)."""
    first_eos = (input_ids == eos_token_id).int().argmax(dim=-1, keepdim=True)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    return positions.unsqueeze(0) > first_eos

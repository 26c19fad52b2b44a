"""The mechanics of XTI / P+ (Voynov et al. 2023): one text condition per cross-attention layer.

A "layer" is one spatial transformer of the UNet (a ``Transformer2DModel``, named by its path,
e.g. ``mid_block.attentions.0``): every cross-attention inside it reads that layer's condition.
On SD 1.x each transformer holds one cross-attention, so this is P+'s 16 layers exactly; on
SDXL the 70 cross-attentions sit in 11 transformers (depth 2 or 10), and the block is the unit
P+'s analysis speaks of (coarse / fine by resolution), while one text-encoder pass per
cross-attention would cost 70 passes of both encoders a step (docs/DESIGN.md, "XTI on SDXL").

Each concept token owns one embedding row per layer, in every text encoder. Rather than a second
lookup table, layer l's copy of a token is simply another tokenizer id: the rows are laid out
layer-major after the token's own id (``id + l * K`` for a block of K token ids), so encoding a
prompt for layer l is remapping its ids and running the ordinary text encoder. All layers'
prompts go through the text encoder in one batched call; the results are packed along the
sequence axis, (B, n_layers * L, D), a shape that survives everything a pipeline does to
encoder states (classifier-free-guidance concatenation, repeats per prompt). A thin processor
per cross-attention layer cuts out its own L positions and hands them to the usual attention.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTokenizer

from core.concept import vector_token_names
from step.encoding import TextEncoding

_STAGES = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
LAYER_SUFFIX = "@xti-layer"  # tokenizer entries that reserve the ids of layer copies


def layer_of(processor_name: str) -> str:
    """The layer (spatial transformer) a cross-attention processor belongs to; also maps the
    processor names older exports list (one per layer on SD 1.x) to their layer."""
    return processor_name.split(".transformer_blocks.")[0].removesuffix(".attn2.processor")


def _forward_order(name: str) -> tuple[int, list[int]]:
    parts = name.split(".")
    return _STAGES.get(parts[0], len(_STAGES)), [int(p) for p in parts if p.isdigit()]


def cross_attention_processors(unet: UNet2DConditionModel) -> list[str]:
    """Processor names of the UNet's cross-attentions, in forward (input->output) order.

    P+ numbers the layers from the UNet's input to its output, so down blocks come first, then
    the middle block, then the up blocks (diffusers lists up before mid).
    """
    names = (n for n in unet.attn_processors if n.endswith("attn2.processor"))
    return sorted(names, key=_forward_order)


def cross_attention_layers(unet: UNet2DConditionModel) -> list[str]:
    """The UNet's layers (spatial transformers holding cross-attention), in forward order."""
    return list(dict.fromkeys(layer_of(n) for n in cross_attention_processors(unet)))


def default_text_layer(layer_names: list[str]) -> int:
    """The middle block's layer (coarse, semantic in P+'s analysis), else the middle index."""
    for index, name in enumerate(layer_names):
        if name.startswith("mid_block"):
            return index
    return len(layer_names) // 2


def check_layers(saved: list[str], current: list[str], source: str) -> None:
    """Saved per-layer embeddings fit only a UNet with the same cross-attention layers."""
    saved = [layer_of(name) for name in saved]
    if saved == current:
        return
    if len(saved) != len(current):
        raise ValueError(
            f"XTI embeddings {source} hold {len(saved)} per-layer vectors, but this UNet has "
            f"{len(current)} cross-attention layers. XTI embeddings load only into the UNet "
            "architecture they were learned on (16 layers for SD 1.x, 11 for SDXL); use the same "
            "pretrained_model_name_or_path, or start without them."
        )
    raise ValueError(
        f"XTI embeddings {source} were learned on cross-attention layers {saved[:2]}..., but "
        f"this UNet's are {current[:2]}...; the architectures differ."
    )


def reserve_layer_tokens(
    tokenizer: CLIPTokenizer, names: list[str], num_layers: int, suffix: str = LAYER_SUFFIX
) -> None:
    """Add tokenizer entries for copies 1.. of the just-added ``names`` (ids must follow them).

    The entries are never typed in prompts; they keep the ids of layer copies (ProSpect: stage
    copies, ``suffix`` names which) from being handed out again (to a textual-inversion token
    loaded later, say).
    """
    first = tokenizer.convert_tokens_to_ids(names[0])
    if tokenizer.convert_tokens_to_ids(names) != list(range(first, first + len(names))):
        raise ValueError(f"XTI tokens {names} did not get consecutive tokenizer ids.")
    layer_names = [f"{n}{suffix}{layer}" for layer in range(1, num_layers) for n in names]
    tokenizer.add_tokens(layer_names)
    expected = list(range(first + len(names), first + len(names) * num_layers))
    if tokenizer.convert_tokens_to_ids(layer_names) != expected:
        raise ValueError(
            f"Could not reserve consecutive ids for the per-layer copies of {names}; were some "
            "of these tokens added to the tokenizer before?"
        )


def install_token_copies(
    parts: list[tuple[CLIPTokenizer, Any]],
    per_encoder: list[dict[str, torch.Tensor]],
    num_copies: int,
    suffix: str = LAYER_SUFFIX,
) -> int:
    """Add saved tokens with ``num_copies`` copies each to a pipeline's (tokenizer, text
    encoder) pairs; ``per_encoder[e][token]`` is (num_copies, num_vectors, dim). Every check
    runs before anything changes; returns the first new id (the block's start)."""
    first_vectors = per_encoder[0]
    names = [n for t, v in first_vectors.items() for n in vector_token_names(t, v.shape[1])]
    for tokenizer, text_encoder in parts:
        vocab = tokenizer.get_vocab()
        taken = [n for n in names if n in vocab or f"{n}</w>" in vocab]
        if taken:
            raise ValueError(f"Tokens {taken} are already in the pipeline's tokenizer.")
        rows = text_encoder.get_input_embeddings().num_embeddings
        if rows != len(tokenizer) or len(tokenizer) != len(parts[0][0]):
            raise ValueError(
                f"The text encoder has {rows} token embeddings but the tokenizer "
                f"{len(tokenizer)} tokens; loading per-copy tokens needs them (and every "
                "tokenizer) to agree."
            )
    first = len(parts[0][0])
    for (tokenizer, text_encoder), vectors in zip(parts, per_encoder):
        tokenizer.add_tokens(names)
        reserve_layer_tokens(tokenizer, names, num_copies, suffix)
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        rows = torch.cat([v.reshape(num_copies, -1, v.shape[-1]) for v in vectors.values()], 1)
        weight = text_encoder.get_input_embeddings().weight
        with torch.no_grad():
            weight[first:] = rows.reshape(-1, rows.shape[-1]).to(weight.dtype)
    return first


@dataclass
class LayerTokenBlocks:
    """Blocks of token ids with per-layer copies: (first id, K); layer l reads id + l * K."""

    blocks: list[tuple[int, int]] = field(default_factory=list)

    def _in_blocks(self, input_ids: torch.Tensor) -> list[torch.Tensor]:
        return [(input_ids >= first) & (input_ids < first + k) for first, k in self.blocks]

    def holds_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B,) whether each prompt contains a per-layer token."""
        hits = torch.zeros_like(input_ids, dtype=torch.bool)
        for inside in self._in_blocks(input_ids):
            hits |= inside
        return hits.any(dim=-1)

    def for_layer(self, input_ids: torch.Tensor, layer: int) -> torch.Tensor:
        """The ids with each per-layer token replaced by its layer-``layer`` copy."""
        remapped = input_ids
        for (_, k), inside in zip(self.blocks, self._in_blocks(input_ids)):
            remapped = torch.where(inside, remapped + layer * k, remapped)
        return remapped


def encode_per_layer(
    encode: Callable[[torch.Tensor], TextEncoding],
    input_ids: torch.Tensor,
    blocks: LayerTokenBlocks,
    num_layers: int,
) -> list[TextEncoding]:
    """Each layer's encoding (``encode``: ids -> the family's text path), in one call.

    Prompts without per-layer tokens read the same text in every layer, so they are encoded
    once; the others once per layer (layer 0's copy is the token's own id). Every per-row
    output of the family (states, SDXL's pooled text) is taken per layer.
    """
    holds = blocks.holds_tokens(input_ids)
    if num_layers == 1 or not bool(holds.any()):
        return [encode(input_ids)] * num_layers
    rows = input_ids[holds]
    copies = [blocks.for_layer(rows, layer) for layer in range(1, num_layers)]
    stacked = encode(torch.cat([input_ids, *copies]))
    batch = input_ids.shape[0]
    where = holds.nonzero(as_tuple=True)

    def per_layer(values: torch.Tensor | None) -> list[torch.Tensor | None]:
        if values is None:
            return [None] * num_layers
        shared, chunks = values[:batch], values[batch:].split(rows.shape[0])
        return [shared] + [shared.index_put(where, chunk) for chunk in chunks]

    fields = zip(
        per_layer(stacked.hidden_states),
        per_layer(stacked.text_embeds),
        per_layer(stacked.clip_pooled),
        per_layer(stacked.clip_states),
    )
    return [
        TextEncoding(states, input_ids, None, pooled, clip, clip_states)  # type: ignore[arg-type]
        for states, pooled, clip, clip_states in fields
    ]


def pack(layer_states: torch.Tensor) -> torch.Tensor:
    """(n_layers, B, L, D) -> (B, n_layers * L, D): layer l owns positions [l*L, (l+1)*L)."""
    num_layers, batch, length, dim = layer_states.shape
    return layer_states.permute(1, 0, 2, 3).reshape(batch, num_layers * length, dim)


class XTIAttnProcessor:
    """Gives one cross-attention layer its own slice of packed per-layer states.

    States of a single prompt length (no per-layer tokens, e.g. a class prompt or an empty
    negative prompt) reach every layer unchanged. The attention itself is ``inner``'s.
    """

    def __init__(self, layer: int, num_layers: int, text_length: int, inner: Any) -> None:
        self.layer, self.num_layers, self.text_length = layer, num_layers, text_length
        self.inner = inner

    def select(self, states: torch.Tensor) -> torch.Tensor:
        length = states.shape[1]
        if length == self.num_layers * self.text_length:
            start = self.layer * self.text_length
            return states[:, start : start + self.text_length]
        if length == self.text_length:
            return states
        raise ValueError(
            f"XTI layer {self.layer} got encoder states of length {length}; expected "
            f"{self.text_length} (one prompt) or {self.num_layers} x {self.text_length} (packed "
            "per-layer states from encode_text(...).conditioning or xti_prompt_embeds)."
        )

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            encoder_hidden_states = self.select(encoder_hidden_states)
        return self.inner(
            attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
        )


def install_processors(
    unet: UNet2DConditionModel, layer_names: list[str], text_length: int
) -> None:
    """Wrap each cross-attention's processor (once) in an `XTIAttnProcessor` reading its
    layer's slice."""
    processors = dict(unet.attn_processors)
    for name in cross_attention_processors(unet):
        inner = processors[name]
        if isinstance(inner, XTIAttnProcessor):
            inner = inner.inner
        index = layer_names.index(layer_of(name))
        processors[name] = XTIAttnProcessor(index, len(layer_names), text_length, inner)
    unet.set_attn_processor(processors)

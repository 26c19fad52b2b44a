"""Capture the UNet's cross-attention probabilities, whatever processors a baseline installed.

Baselines install different attention processors (plain ``AttnProcessor2_0``, Custom Diffusion's
own K/V copies with the start token detached, peft LoRA-wrapped projections, XTI's per-layer
text). Recomputing the probabilities from the layer's ``to_q``/``to_k`` would miss those
differences, so instead a forward hook on each cross-attention layer activates a
`TorchFunctionMode` for the duration of that layer's forward: it sees the very query and key the
processor hands to ``F.scaled_dot_product_attention`` (or the ``softmax`` of the classic
``get_attention_scores`` path), records softmax(q k^T * scale + mask) on the side, and then runs
the original call unchanged, so the generated image is bitwise the same. No processor is
replaced; removing the hooks is all the clean-up there is.

Maps are averaged over heads, layers and UNet calls (denoising steps), each layer resized to one
``resolution`` x ``resolution`` grid; at every pixel they stay a distribution over the text tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

from backbones import FAMILIES
from backbones.base import BackboneFamily


def attention_probabilities(
    query: torch.Tensor,
    key: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale + mask) in fp32, as scaled_dot_product_attention computes it."""
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = query.float() @ key.float().transpose(-1, -2) * scale
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.float()
    return scores.softmax(dim=-1)


class _RecordAttention(TorchFunctionMode):
    """Active only inside one cross-attention layer's forward; records what it computes."""

    def __init__(self, sink: Callable[[torch.Tensor], None]) -> None:
        super().__init__()
        self.sink = sink

    def __torch_function__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        if func is F.scaled_dot_product_attention:
            # By position (the UNet's processors) or by name (diffusers' attention dispatch).
            order = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")
            named = dict(zip(order, args))
            named.update(kwargs)
            if named.get("is_causal"):
                raise ValueError("AttentionCapture met a causal attention in a cross-attention.")
            probs = attention_probabilities(
                named["query"], named["key"], named.get("attn_mask"), named.get("scale")
            )
            self.sink(probs)
        elif func in (torch.Tensor.softmax, torch.softmax, F.softmax):
            # The classic path (attn.get_attention_scores): these are already the probabilities.
            self.sink(output.detach().float())
        return output


class AttentionCapture:
    """Context manager: average cross-attention maps of every UNet call made inside it.

    ``maps`` has shape (N, L, resolution, resolution): N the UNet batch (with classifier-free
    guidance the unconditional rows come first), L the text length; ``maps.sum(1)`` is 1.
    """

    def __init__(
        self, unet: nn.Module, resolution: int = 16, family: BackboneFamily | None = None
    ) -> None:
        if resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {resolution}.")
        self.unet = unet
        self.resolution = resolution
        # Which layers read text and how their maps are laid out is the family's (FLUX's
        # joint attention holds text and image in one sequence).
        self.family = family or FAMILIES["sd1"]
        self.layers = self.family.attention_layers(unet)
        self._text_length: int | None = None
        if not self.layers:
            raise ValueError(
                f"{type(unet).__name__} has no cross-attention layers (diffusers Attention with "
                "cross_attention_dim); there is nothing to capture."
            )
        self._handles: list[RemovableHandle] = []
        self._sum: torch.Tensor | None = None
        self._count = 0
        self._latent_size: tuple[int, int] | None = None
        self._pending: list[torch.Tensor] = []
        self._mode: _RecordAttention | None = None

    # ----- results ----------------------------------------------------------------------------
    @property
    def maps(self) -> torch.Tensor:
        if self._sum is None:
            raise RuntimeError("No cross-attention was captured: run the UNet inside the capture.")
        return self._sum / self._count

    @property
    def calls(self) -> int:
        """How many layer calls were averaged (layers x UNet calls)."""
        return self._count

    # ----- hooks ------------------------------------------------------------------------------
    def __enter__(self) -> AttentionCapture:
        self._handles.append(self.unet.register_forward_pre_hook(self._on_unet, with_kwargs=True))
        for name, layer in self.layers.items():
            self._handles.append(layer.register_forward_pre_hook(self._enter_layer))
            self._handles.append(
                layer.register_forward_hook(self._exit_layer(name, layer), always_call=True)
            )
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._mode is not None:  # an exception inside a layer left the mode on
            self._mode.__exit__(None, None, None)
            self._mode = None

    def _on_unet(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        height, width, self._text_length = self.family.attention_sizes(args, kwargs)
        self._latent_size = (height, width)

    def _enter_layer(self, module: nn.Module, args: tuple) -> None:
        self._pending = []
        self._mode = _RecordAttention(self._pending.append)
        self._mode.__enter__()

    def _exit_layer(self, name: str, layer: nn.Module) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if self._mode is not None:
                self._mode.__exit__(None, None, None)
                self._mode = None
            if not self._pending:
                raise RuntimeError(
                    f"AttentionCapture saw no attention probabilities in {name} (processor "
                    f"{type(layer.processor).__name__}). It reads F.scaled_dot_product_attention "
                    "or the softmax of get_attention_scores; a processor that computes attention "
                    "otherwise (xformers, fused kernels) cannot be captured: use AttnProcessor2_0 "
                    "based processors for analysis."
                )
            # A layer's first attention is over the text; a decoupled one after it (IP-Adapter's
            # image tokens, other keys) is not the prompt's map.
            keys = self._pending[0].shape[-1]
            text_only = [record for record in self._pending if record.shape[-1] == keys]
            probs = self._per_batch(text_only, layer.heads)
            self._add(self.family.text_attention(probs, self._text_length))
            self._pending = []

        return hook

    @staticmethod
    def _per_batch(recorded: list[torch.Tensor], heads: int) -> torch.Tensor:
        """Head-averaged probabilities (N, Lq, Lk) from SDPA's (N, H, Lq, Lk) or from
        get_attention_scores' (N*H, Lq, Lk), possibly computed in slices."""
        if recorded[0].dim() == 4:
            return torch.cat(recorded, dim=0).mean(dim=1)
        flat = torch.cat(recorded, dim=0)
        return flat.reshape(-1, heads, *flat.shape[1:]).mean(dim=1)

    def _add(self, probs: torch.Tensor) -> None:
        if self._latent_size is None:
            raise RuntimeError("AttentionCapture saw a cross-attention call outside a UNet call.")
        batch, queries, tokens = probs.shape
        height, width = self._layer_size(queries)
        grid = probs.transpose(1, 2).reshape(batch, tokens, height, width)
        size = (self.resolution, self.resolution)
        # Both modes resample each pixel as a convex combination of input pixels, applied to
        # every token alike, so each pixel stays a distribution over the tokens.
        if height >= self.resolution and width >= self.resolution:
            grid = F.interpolate(grid, size=size, mode="area")
        else:
            grid = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
        grid = grid.cpu()
        if self._sum is None:
            self._sum = torch.zeros_like(grid)
        elif self._sum.shape != grid.shape:
            raise RuntimeError(
                f"UNet calls inside one AttentionCapture differ in batch or text length "
                f"({tuple(self._sum.shape)} vs {tuple(grid.shape)}); capture one generation."
            )
        self._sum += grid
        self._count += 1

    def _layer_size(self, queries: int) -> tuple[int, int]:
        """A layer's (h, w) from its query count and the latent size (the UNet halves both)."""
        assert self._latent_size is not None
        latent_h, latent_w = self._latent_size
        factor = math.sqrt(latent_h * latent_w / queries)
        height, width = round(latent_h / factor), round(latent_w / factor)
        if height * width != queries:
            raise RuntimeError(
                f"Cannot place {queries} attention queries on a grid for latents "
                f"{latent_h}x{latent_w}; is this a UNet cross-attention layer?"
            )
        return height, width

"""SVDiff's spectral shifts (Han et al. 2023, section 3.1) on a module's weight matrices.

A targeted weight W (an ``nn.Linear`` weight; an ``nn.Conv2d`` kernel reshaped to (out,
in*kh*kw), as the paper does) is decomposed once, W = U diag(S) Vh, and only a shift delta of
its singular values trains: the layer's weight becomes U diag(ReLU(S + delta)) Vh.

We write that weight as W + U diag(ReLU(S + delta) - S) Vh. In exact arithmetic the two are
one (S >= 0, so ReLU(S) = S, and U diag(S) Vh = W); in floating point the residual form gives
back W bitwise at delta = 0, so an untrained SVDiff samples exactly what the base model samples,
and the frozen W itself is never rewritten. U, S and Vh are buffers kept out of the state dict
(recomputed from W, never saved): a checkpoint holds the shifts only.

The same function (`shifted_weight`) updates a diffusers pipeline's weights in `apply_shifts`,
so an export installed there reconstructs what the module trained.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

MATRIX_LAYERS = (nn.Linear, nn.Conv2d)


def decompose(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U, S, Vh of the weight as a matrix (out, in*kh*kw), in fp32."""
    matrix = weight.detach().float().reshape(weight.shape[0], -1)
    return torch.linalg.svd(matrix, full_matrices=False)


def shift_update(
    u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, delta: torch.Tensor
) -> torch.Tensor:
    """U diag(ReLU(S + delta) - S) Vh: what the shift adds to W (as a matrix)."""
    return (u * (F.relu(s + delta) - s)) @ vh


def shifted_weight(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """W with its singular values shifted by ``delta`` (fresh SVD of W), in W's shape and dtype."""
    u, s, vh = decompose(weight)
    update = shift_update(u, s, vh, delta.to(s))
    return weight + update.reshape(weight.shape).to(weight.dtype)


class SpectralShift(nn.Module):
    """The parametrization: weight -> W + U diag(ReLU(S + delta) - S) Vh (see the module doc)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        u, s, vh = decompose(weight)
        # Not in the state dict: derived from the frozen W, so checkpoints hold only delta.
        self.register_buffer("U", u, persistent=False)
        self.register_buffer("S", s, persistent=False)
        self.register_buffer("Vh", vh, persistent=False)
        self.delta = nn.Parameter(torch.zeros_like(s))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        # The update in fp32 (autocast off): delta's gradient then comes from an fp32 product.
        # The sum is in the weight's dtype, so with frozen weights stored in bf16 a shift below
        # bf16's resolution of W is rounded away there, as in the reference implementation.
        with torch.autocast(weight.device.type, enabled=False):
            update = shift_update(self.U.float(), self.S.float(), self.Vh.float(), self.delta)
        return weight + update.reshape(weight.shape).to(weight.dtype)


def matching_layers(root: nn.Module, patterns: list[str] | None, where: str) -> list[str]:
    """Names of the layers of ``root`` the patterns select (None: every Linear and Conv2d).

    A pattern is a regular expression a layer name must match in full, or in a tail after a
    dot (``to_k`` selects every ``...attn1.to_k``; ``attn2\\.to_[kv]`` the cross-attention K/V).
    A pattern selecting nothing, or a selected layer without a weight matrix, is a ValueError
    naming it and the fix."""
    named = dict(root.named_modules())
    if patterns is None:
        return [name for name, module in named.items() if isinstance(module, MATRIX_LAYERS)]
    chosen: list[str] = []
    for pattern in patterns:
        try:
            regex = re.compile(rf"(?:.*\.)?(?:{pattern})")
        except re.error as error:
            raise ValueError(
                f"{where} pattern {pattern!r} is not a regular expression: {error}."
            ) from None
        found = [name for name in named if name and regex.fullmatch(name)]
        if not found:
            example = next(n for n, m in named.items() if isinstance(m, MATRIX_LAYERS))
            raise ValueError(
                f"{where} pattern {pattern!r} matches no layer; patterns match a layer name or "
                f"its tail after a dot, e.g. {example.rsplit('.', 1)[-1]!r} for {example!r}."
            )
        for name in found:
            check_matrix_layer(name, named[name], where)
            if name not in chosen:
                chosen.append(name)
    return chosen


def check_matrix_layer(name: str, module: nn.Module, where: str) -> None:
    """Spectral shifts need a weight matrix: an nn.Linear or an nn.Conv2d (kernel reshaped)."""
    if isinstance(module, MATRIX_LAYERS):
        return
    weight = getattr(module, "weight", None)
    shape = (
        f"a weight of shape {list(weight.shape)}"
        if isinstance(weight, torch.Tensor)
        else ("no weight of its own")
    )
    raise ValueError(
        f"{where} selects {name!r}, a {type(module).__name__} with {shape}: SVDiff shifts the "
        "singular values of weight matrices, so only nn.Linear and nn.Conv2d layers can take "
        "one; narrow the pattern to those layers (e.g. 'attn2\\.to_k'), or leave "
        f"{where} out for every Linear and Conv2d."
    )


def add_spectral_shifts(root: nn.Module, names: Iterable[str]) -> None:
    """Parametrize each named layer's weight with a `SpectralShift` (delta trains, W stays)."""
    for name in names:
        layer = root.get_submodule(name)
        parametrize.register_parametrization(layer, "weight", SpectralShift(layer.weight))


def spectral_shifts(root: nn.Module) -> dict[str, SpectralShift]:
    """Each parametrized layer's `SpectralShift`, by the layer's name in ``root``."""
    return {
        name: module.parametrizations["weight"][0]
        for name, module in root.named_modules()
        if parametrize.is_parametrized(module, "weight")
        and isinstance(module.parametrizations["weight"][0], SpectralShift)
    }


def check_shifts_fit(root: nn.Module, shifts: dict[str, torch.Tensor], component: str) -> None:
    """Raise before anything changes when a shift names a layer ``root`` lacks, a layer without
    a weight matrix, or has another length than the layer's singular values."""
    named = dict(root.named_modules())
    for name, delta in shifts.items():
        layer = named.get(name)
        if layer is None:
            raise ValueError(
                f"the spectral shifts name {component}.{name}, a layer this pipeline's "
                f"{component} lacks: the export was trained on another base model; load it "
                "into a pipeline of the model it names (metadata 'base_model')."
            )
        check_matrix_layer(f"{component}.{name}", layer, "the spectral-shift file")
        rank = min(layer.weight.shape[0], layer.weight[0].numel())
        if tuple(delta.shape) != (rank,):
            raise ValueError(
                f"the spectral shift of {component}.{name} has shape {list(delta.shape)} but "
                f"that layer's weight {list(layer.weight.shape)} has {rank} singular values: "
                "the export was trained on another base model; load it into a pipeline of "
                "the model it names (metadata 'base_model')."
            )

"""NeTI's mapper (Alaluf et al. 2023): (denoising timestep, UNet layer) -> a token embedding
and a textual-bypass vector.

Following the paper and the authors' code (NeuralTextualInversion/NeTI, models/neti_mapper.py,
whose defaults these are):

- input encoding: random Fourier features of x = (t, l), v = [sin(W x), cos(W x)] / ||.||,
  with W (num_features x 2) drawn once from N(0, 1) and its columns scaled by (sigma_t,
  sigma_l) = (0.03, 2.0); W is fixed (drawn from ``pe_seed``), not trained;
- a linear layer to one output per (time anchor, layer) pair, initialised to the encodings of
  the anchors t in {0, T/A, ...}, l in {0, ..., n_layers - 1}, so it starts as a similarity to
  each anchor (160 = 10 anchors x 16 layers on SD 1.x);
- two Linear(., 128) + LayerNorm + LeakyReLU blocks; nested dropout on the 128 features while
  training (with probability 0.5 per call, each row keeps only a random prefix of them, so the
  first features carry the coarse concept);
- Linear(128, D) (2D with the bypass): the output, rescaled to ``norm_scale`` (the norm of a
  real word's embedding, so the vector lives where CLIP's words do). The authors' code
  rescales the concatenated 2D output (word and bypass together), as here.
"""

from __future__ import annotations

import torch
from torch import nn


def fourier_features(
    timesteps: torch.Tensor, layers: torch.Tensor, frequencies: torch.Tensor
) -> torch.Tensor:
    """(N,) timesteps and (N,) layer indices -> (N, 2F) unit-norm [sin(W x), cos(W x)]."""
    x = torch.stack([timesteps.float(), layers.float()], dim=-1)  # (N, 2)
    angles = x @ frequencies.float().T  # (N, F)
    features = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    return features / features.norm(dim=-1, keepdim=True)


class NeTIMapper(nn.Module):
    """The (t, l) -> (word embedding, bypass) network."""

    def __init__(
        self,
        output_dim: int,
        num_layers: int,
        num_timesteps: int = 1000,
        output_bypass: bool = True,
        num_time_anchors: int = 10,
        sigma_t: float = 0.03,
        sigma_l: float = 2.0,
        num_features: int = 1024,
        hidden_dim: int = 128,
        pe_seed: int = 0,
        norm_scale: float | None = None,
    ) -> None:
        super().__init__()
        self.output_dim, self.output_bypass = output_dim, output_bypass
        generator = torch.Generator().manual_seed(pe_seed)
        frequencies = torch.randn(num_features, 2, generator=generator)
        frequencies *= torch.tensor([sigma_t, sigma_l])
        self.register_buffer("frequencies", frequencies)
        norm = torch.tensor(float("nan") if norm_scale is None else norm_scale)
        self.register_buffer("norm_scale", norm)  # nan: no rescaling
        step = num_timesteps // num_time_anchors
        anchor_t = torch.arange(0, num_timesteps, step)[:num_time_anchors]
        grid_t, grid_l = torch.meshgrid(anchor_t, torch.arange(num_layers), indexing="ij")
        anchors = fourier_features(grid_t.flatten(), grid_l.flatten(), frequencies)
        self.input_layer = nn.Linear(2 * num_features, anchors.shape[0])
        with torch.no_grad():
            self.input_layer.weight.copy_(anchors)
        self.hidden = nn.Sequential(
            nn.Linear(anchors.shape[0], hidden_dim),
            nn.LayerNorm(hidden_dim),
            nn.LeakyReLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.LayerNorm(hidden_dim),
            nn.LeakyReLU(),
        )
        self.output_layer = nn.Linear(hidden_dim, output_dim * (2 if output_bypass else 1))

    @property
    def hidden_dim(self) -> int:
        return self.output_layer.in_features

    def features(self, timesteps: torch.Tensor, layers: torch.Tensor) -> torch.Tensor:
        """The hidden features before nested dropout, (N, hidden_dim)."""
        encoded = fourier_features(timesteps, layers, self.frequencies)
        return self.hidden(self.input_layer(encoded.to(self.input_layer.weight.dtype)))

    def forward(
        self,
        timesteps: torch.Tensor,
        layers: torch.Tensor,
        keep: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N,) timesteps and layer indices -> word embeddings (N, D) and bypass vectors
        (N, D) or None. ``keep`` (N,): nested dropout, row i keeps its first keep[i] hidden
        features (None: all)."""
        hidden = self.features(timesteps, layers)
        if keep is not None:
            positions = torch.arange(hidden.shape[-1], device=hidden.device)
            hidden = hidden * (positions < keep[:, None]).to(hidden.dtype)
        output = self.output_layer(hidden)
        if not bool(torch.isnan(self.norm_scale)):
            output = nn.functional.normalize(output, dim=-1) * self.norm_scale.to(output.dtype)
        if not self.output_bypass:
            return output, None
        return output[:, : self.output_dim], output[:, self.output_dim :]

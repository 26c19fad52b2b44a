"""Min-SNR-gamma weighting of the DDPM denoising loss (Hang et al. 2023, "Efficient Diffusion
Training via Min-SNR Weighting Strategy"), as diffusers' training scripts apply ``--snr_gamma``.

The paper weights the x0-space loss by min(SNR(t), gamma). Written for a noise (epsilon)
prediction, whose loss is SNR(t) times the x0 loss, the weight becomes
min(SNR(t), gamma) / SNR(t); for a v-prediction, whose loss is (SNR(t) + 1) times the x0 loss,
min(SNR(t), gamma) / (SNR(t) + 1). SNR(t) = alpha_bar_t / (1 - alpha_bar_t) comes from
diffusers' ``compute_snr``.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.training_utils import compute_snr


def check_min_snr_gamma(gamma: float | None, flow_matching: bool, family: str) -> None:
    if gamma is None:
        return
    if flow_matching:
        raise ValueError(
            f"min_snr_gamma weighs DDPM's noise-prediction loss; {family} trains with flow "
            "matching: leave min_snr_gamma out and choose flow_matching.weighting_scheme."
        )
    if not gamma > 0:
        raise ValueError(f"min_snr_gamma must be > 0 (5.0 is the paper's), got {gamma}.")


def min_snr_weights(scheduler: Any, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Each sample's loss weight for its timestep (shape (B,))."""
    snr = compute_snr(scheduler, timesteps).float()
    clipped = torch.clamp(snr, max=gamma)
    if scheduler.config.prediction_type == "v_prediction":
        return clipped / (snr + 1)
    if scheduler.config.prediction_type == "epsilon":
        return clipped / snr
    raise ValueError(
        f"min_snr_gamma is written for epsilon or v prediction; this scheduler predicts "
        f"{scheduler.config.prediction_type!r}: leave min_snr_gamma out."
    )

"""``min_snr_gamma``: the weights against the paper's formula from the scheduler's own
alphas_cumprod (epsilon and v-prediction), the step's denoising loss weighted per sample by
them, and the refusals (flow matching, a gamma <= 0) in one line."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from helpers import optimizer_with_lr, tiny_datamodule

from models import LoRA
from step.draws import SampleDraws
from training.loss_weighting import min_snr_weights

GAMMA = 5.0


def paper_weight(alpha_bar: float, gamma: float, prediction: str) -> float:
    """Hang et al.: the x0 loss weighted by min(SNR, gamma); an epsilon loss is SNR times the
    x0 loss, a v loss (SNR + 1) times it."""
    snr = alpha_bar / (1 - alpha_bar)
    return min(snr, gamma) / (snr if prediction == "epsilon" else snr + 1)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_the_weights_are_the_papers(prediction: str) -> None:
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", prediction_type=prediction)
    timesteps = torch.tensor([0, 10, 200, 500, 999])
    weights = min_snr_weights(scheduler, timesteps, GAMMA)
    alpha_bars = scheduler.alphas_cumprod.double()
    expected = [paper_weight(float(alpha_bars[t]), GAMMA, prediction) for t in timesteps]
    assert torch.allclose(weights.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5)
    if prediction == "epsilon":  # high-SNR (small t) samples are the ones weighted down
        assert weights[0] < 0.01 and weights[-1] == pytest.approx(1.0)


@pytest.mark.smoke  # the newest allowed versions too
def test_the_denoising_loss_weighs_each_sample_by_its_timestep() -> None:
    datamodule = tiny_datamodule()
    module = LoRA(
        concepts=datamodule.concepts, optimizer=optimizer_with_lr(1e-2), min_snr_gamma=GAMMA
    )
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    draws = module.sample_draws(batch, step=0)
    assert isinstance(draws, SampleDraws)
    record = module.denoise(batch, draws, with_prior=False)
    errors = F.mse_loss(record.model_pred, record.target, reduction="none").mean(dim=(1, 2, 3))
    alpha_bars = module.noise_scheduler.alphas_cumprod.double()
    weights = [paper_weight(float(alpha_bars[t]), GAMMA, "epsilon") for t in record.timesteps]
    expected = (errors.double() * torch.tensor(weights, dtype=torch.float64)).mean()
    assert torch.allclose(module.denoising_loss(record).double(), expected, rtol=1e-5)


def test_min_snr_on_flux_or_a_gamma_below_zero_is_refused() -> None:
    concepts = tiny_datamodule().concepts
    with pytest.raises(ValueError, match="choose flow_matching.weighting_scheme"):
        LoRA(pretrained_model_name_or_path="tiny-flux", concepts=concepts, min_snr_gamma=GAMMA)
    with pytest.raises(ValueError, match="min_snr_gamma must be > 0"):
        LoRA(concepts=concepts, min_snr_gamma=0.0)

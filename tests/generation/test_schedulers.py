"""Sampling schedulers by name for test / predict, over the model's training schedule."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

from core.concept import ConceptSpec
from generation.evaluation import EvaluationSettings
from generation.schedulers import SAMPLING_SCHEDULERS, make_scheduler
from models import TextualInversion


def test_named_scheduler_keeps_the_training_betas() -> None:
    training = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    ).config
    scheduler = make_scheduler("dpm_solver", training)
    assert isinstance(scheduler, DPMSolverMultistepScheduler)
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.beta_end == pytest.approx(0.012)
    assert {"ddim", "euler", "pndm", "dpm_solver"} <= set(SAMPLING_SCHEDULERS)


def test_unknown_scheduler_fails_when_the_settings_are_read() -> None:
    with pytest.raises(ValueError, match="Unknown sampling scheduler 'dpm'.*dpm_solver"):
        EvaluationSettings(scheduler="dpm")
    with pytest.raises(ValueError, match="num_inference_steps"):
        EvaluationSettings(num_inference_steps=0)


def test_generate_with_another_scheduler_and_explicit_seeds() -> None:
    module = TextualInversion(concepts=[ConceptSpec("<v1>", "toy")])
    prompts = ["a <v1> toy on the beach"] * 2
    euler = module.generate(prompts, seeds=[5, 6], num_inference_steps=2, scheduler="euler")
    again = module.generate(prompts, seeds=[5, 6], num_inference_steps=2, scheduler="euler")
    ddim = module.generate(prompts, seeds=[5, 6], num_inference_steps=2)
    assert euler.shape == (2, 3, 32, 32)
    assert torch.equal(euler, again)
    assert not torch.equal(euler, ddim)
    assert not torch.equal(euler[0], euler[1])  # different seeds, different images

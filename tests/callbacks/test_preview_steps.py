"""evaluation.preview_steps caps the callbacks' sampling steps (the tiny overlay sets 2)."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from helpers import tiny_datamodule

from callbacks.sample_images import SampleImages
from generation.evaluation import EvaluationSettings, preview_steps
from models import TextualInversion


def test_the_cap_applies_only_when_set() -> None:
    uncapped = SimpleNamespace(evaluation=EvaluationSettings())
    capped = SimpleNamespace(evaluation=EvaluationSettings(preview_steps=2))
    assert preview_steps(uncapped, 25) == 25
    assert preview_steps(capped, 25) == 2 and preview_steps(capped, 1) == 1
    with pytest.raises(ValueError, match="preview_steps must be >= 1"):
        EvaluationSettings(preview_steps=0)


def test_sample_images_samples_the_capped_steps() -> None:
    module = TextualInversion(
        concepts=tiny_datamodule().concepts, evaluation=EvaluationSettings(preview_steps=2)
    )
    asked: list[int] = []

    def generate(prompts: list[str], **kwargs: Any) -> torch.Tensor:
        asked.append(kwargs["num_inference_steps"])
        return torch.zeros(len(prompts), 3, 8, 8)

    module.generate = generate  # type: ignore[method-assign]
    trainer = SimpleNamespace(
        is_global_zero=True, global_step=0, loggers=[],
        precision_plugin=SimpleNamespace(forward_context=contextlib.nullcontext),
    )  # fmt: skip
    SampleImages(num_inference_steps=25)._log_samples(trainer, module)  # type: ignore[arg-type]
    assert asked == [2]

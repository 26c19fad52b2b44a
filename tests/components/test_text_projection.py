"""The CLIP text projection the base module lends to PDLoss and SPL."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import tiny_datamodule, tiny_trainer
from transformers import CLIPConfig, CLIPModel, CLIPTextModelWithProjection

from components.text_projection import SD1_CLIP, default_clip_for, load_text_projection
from losses.pd_loss import PriorDecoupleLoss
from models import CustomDiffusion
from pretrained.tiny_sd import ensure_tiny_clip


@pytest.fixture(scope="module")
def module() -> CustomDiffusion:
    return CustomDiffusion(concepts=tiny_datamodule().concepts)


def test_default_clip_matches_the_diffusion_model() -> None:
    assert default_clip_for("tiny-sd") == "tiny-clip"
    assert default_clip_for("tiny-flux") == "tiny-clip"
    assert default_clip_for("stable-diffusion-v1-5/stable-diffusion-v1-5") == SD1_CLIP


def test_projected_features_are_clips_text_embeddings(module: CustomDiffusion) -> None:
    prompts = ["a photo of a toy", "a toy on the beach"]
    projection = module.text_projection()
    assert projection is module.text_projection("tiny-clip")  # loaded once, shared
    assert not any(p.requires_grad for p in projection.parameters())
    with torch.no_grad():
        pooled = module.encode_text(prompts).pooled(module.tokenizer.eos_token_id)
        ours = projection(pooled)
        clip = CLIPTextModelWithProjection.from_pretrained(ensure_tiny_clip())
        ids = module.tokenizer(prompts, padding="max_length", return_tensors="pt").input_ids
        theirs = clip(input_ids=ids).text_embeds
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert "_text_projections" not in "".join(module.state_dict())


def test_a_clip_of_another_width_is_refused(tmp_path: Path) -> None:
    config = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "vocab_size": 100},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=8,
    )  # fmt: skip
    CLIPModel(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="projects 16-wide text features.*32 wide"):
        load_text_projection(str(tmp_path), hidden_size=32)


def test_an_unloadable_clip_fails_before_training(tmp_path: Path) -> None:
    datamodule = tiny_datamodule()
    pd = PriorDecoupleLoss(clip_model=str(tmp_path / "no-such-clip"))
    module = CustomDiffusion(concepts=datamodule.concepts, regularizers=[pd])
    with pytest.raises(OSError, match="Could not load the CLIP text projection"):
        tiny_trainer(tmp_path, max_steps=2).fit(module, datamodule=datamodule)
    assert module.global_step == 0

"""The real metric encoders on the tiny random models: loading, preprocessing, features."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import (
    AutoProcessor,
    Blip2ForImageTextRetrieval,
    BlipForImageTextRetrieval,
    CLIPModel,
    CLIPProcessor,
    ViTModel,
)

from metrics.blip_t import BlipEncoder, BLIPTextScore
from metrics.clip_i import CLIPImageSimilarity
from metrics.clip_t import CLIPTextScore
from metrics.dino_i import DinoEncoder, DINOImageSimilarity
from metrics.gram_d import GramDistance
from pretrained.eval_models import EvalModelNotFoundError
from pretrained.hub import HubUnavailableError
from pretrained.tiny_eval_models import TINY_EVAL_MODELS, resolve_eval_model

PROMPTS = ["a dog in the jungle", "a red dog", "a dog on the beach"]


def images(count: int, side: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, side, side, generator=torch.Generator().manual_seed(seed))


def test_every_tiny_model_is_a_saved_folder() -> None:
    for name in TINY_EVAL_MODELS:
        folder = Path(resolve_eval_model(name))
        assert (folder / "config.json").is_file(), name
        assert list(folder.glob("*.safetensors")), name
    with pytest.raises(HubUnavailableError):  # offline and not cached
        resolve_eval_model("facebook/dino-vits16")


def test_dino_features_are_the_cls_token_after_resize_256_crop_224() -> None:
    model = ViTModel.from_pretrained(resolve_eval_model("tiny-dino"), add_pooling_layer=False)
    assert model.pooler is None
    image = torch.rand(3, 40, 60, generator=torch.Generator().manual_seed(1))
    # By hand: shorter side 40 -> 256, so 60 -> int(384.0); crop offsets (0 + 16, 80 + 0).
    resized = F.interpolate(image[None], size=(256, 384), mode="bicubic", antialias=True).clamp(
        0, 1
    )
    cropped = resized[..., 16:240, 80:304]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = model(pixel_values=(cropped - mean) / std).last_hidden_state[:, 0]
    assert torch.allclose(DinoEncoder(model)([image]), expected, atol=1e-5)


def test_clip_t_on_tiny_clip_matches_clip_computed_directly() -> None:
    folder = resolve_eval_model("tiny-clip")
    model, processor = CLIPModel.from_pretrained(folder), CLIPProcessor.from_pretrained(folder)
    batch = images(3)
    pixels = processor(
        images=[(im * 255).round().to(torch.uint8) for im in batch], return_tensors="pt"
    )
    text = processor(text=PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        image_features = model.get_image_features(**pixels)
        text_features = model.get_text_features(**text)
    image_features = getattr(image_features, "pooler_output", image_features)
    text_features = getattr(text_features, "pooler_output", text_features)
    cosines = F.cosine_similarity(image_features, text_features)
    metric = CLIPTextScore("tiny-clip")
    metric.update(batch, PROMPTS)
    assert metric.compute().item() == pytest.approx(max(cosines.mean().item(), 0.0), abs=1e-5)
    similarity = CLIPImageSimilarity("tiny-clip")
    similarity.set_references(list(batch[:2]), "dog")
    similarity.update(batch[2:])
    pairwise = F.cosine_similarity(image_features[2:], image_features[:2]).mean()
    assert similarity.compute().item() == pytest.approx(pairwise.item(), abs=1e-5)


@pytest.mark.parametrize(
    ("backend", "model_class", "flag", "output"),
    [
        ("blip", BlipForImageTextRetrieval, "use_itm_head", "itm_score"),
        ("blip2", Blip2ForImageTextRetrieval, "use_image_text_matching_head", "logits_per_image"),
    ],
)
def test_blip_features_reproduce_the_models_own_itc_cosine(
    backend, model_class, flag, output
) -> None:
    folder = resolve_eval_model(f"tiny-{backend}")
    model, processor = model_class.from_pretrained(folder), AutoProcessor.from_pretrained(folder)
    batch = images(3, seed=2)
    image, text = BlipEncoder(model, processor, backend)(batch, PROMPTS)
    arrays = (batch * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    pixels = processor.image_processor([Image.fromarray(a) for a in arrays], return_tensors="pt")
    tokens = processor.tokenizer(PROMPTS, padding=True, return_tensors="pt")
    inputs = {**tokens, **pixels}
    inputs.pop("token_type_ids", None)
    with torch.no_grad():
        own = getattr(model(**inputs, **{flag: False}), output).diagonal()
    ours = (image @ text[:, :, None]).squeeze(-1).amax(dim=1)
    assert torch.allclose(ours, own, atol=1e-5)
    metric = BLIPTextScore(backend, f"tiny-{backend}")
    metric.update(batch, PROMPTS)
    assert metric.compute().item() == pytest.approx(own.mean().item(), abs=1e-5)


def test_gram_d_with_the_tiny_vgg_is_zero_only_for_the_same_image() -> None:
    metric = GramDistance("tiny-vgg")
    batch = images(2, seed=3)
    metric.set_references([batch[0]], "style")
    metric.update(batch[:1])
    assert metric.compute().item() == pytest.approx(0.0, abs=1e-12)
    metric.reset()
    metric.update(batch[1:])
    assert metric.compute().item() > 0


def test_a_missing_local_model_says_how_to_provide_it(tmp_path: Path) -> None:
    with pytest.raises(EvalModelNotFoundError) as error:
        DINOImageSimilarity(model=str(tmp_path / "dino-weights"))
    message = str(error.value)
    assert "dino-weights" in message and "evaluation.metrics.dino_model" in message
    assert "huggingface-cli download" in message and "save_pretrained" in message


@pytest.mark.parametrize(
    ("build", "option"),
    [
        (lambda: CLIPTextScore("nobody/no-such-clip"), "clip_model"),
        (lambda: BLIPTextScore("blip2", "nobody/no-such-blip2"), "blip_model"),
        (lambda: GramDistance("nobody/no-such-vgg"), "gram_model"),
    ],
)
def test_an_uncached_hub_model_fails_offline_with_the_fix(build, option, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EvalModelNotFoundError, match=f"evaluation.metrics.{option}"):
        build()

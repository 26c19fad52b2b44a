"""The tiny offline Stable Diffusion pipeline: layout, loading, determinism, tokenizer, naming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file
from transformers import CLIPTokenizer

from pretrained.hub import HubUnavailableError
from pretrained.resolve import resolve_pretrained
from pretrained.stable_diffusion import load_components
from pretrained.tiny_sd import TINY_MODEL_NAME, save_tiny_pipeline

SUBFOLDERS = ("tokenizer", "text_encoder", "vae", "unet", "scheduler")
UNET_WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"
# DreamBench's class words that are one word; each must be a single token, as in SD 1.5.
DREAMBENCH_ONE_WORD_CLASSES = (
    "dog cat toy backpack bowl can candle clock sneaker boot glasses teapot vase cartoon"
).split()


def test_folder_has_diffusers_layout(tiny_sd_path: Path) -> None:
    index = json.loads((tiny_sd_path / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for name in SUBFOLDERS:
        assert (tiny_sd_path / name).is_dir(), name
        assert name in index, name
    assert (tiny_sd_path / UNET_WEIGHTS).is_file()


def test_diffusers_loads_and_generates_32px(tiny_sd_path: Path) -> None:
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_path, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        "a photo of a dog",
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images
    assert images.shape == (1, 3, 32, 32)
    assert torch.isfinite(images).all()
    assert images.min() >= 0 and images.max() <= 1


@pytest.fixture(scope="module")
def built_twice_and_other_seed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ...]:
    root = tmp_path_factory.mktemp("tiny-builds")
    return (
        save_tiny_pipeline(root / "first", seed=0),
        save_tiny_pipeline(root / "second", seed=0),
        save_tiny_pipeline(root / "other", seed=1),
    )


def test_same_seed_gives_identical_weights(built_twice_and_other_seed: tuple[Path, ...]) -> None:
    first, second, _ = built_twice_and_other_seed
    assert (first / UNET_WEIGHTS).read_bytes() == (second / UNET_WEIGHTS).read_bytes()
    for sub in ("text_encoder", "vae"):
        (a,) = (first / sub).glob("*.safetensors")
        (b,) = (second / sub).glob("*.safetensors")
        tensors_a, tensors_b = load_file(a), load_file(b)
        assert tensors_a.keys() == tensors_b.keys()
        assert all(torch.equal(tensors_a[k], tensors_b[k]) for k in tensors_a), sub
    for name in ("vocab.json", "merges.txt"):
        assert (first / "tokenizer" / name).read_text() == (second / "tokenizer" / name).read_text()


def test_different_seed_gives_different_weights(
    built_twice_and_other_seed: tuple[Path, ...],
) -> None:
    first, _, other = built_twice_and_other_seed
    a, b = load_file(first / UNET_WEIGHTS), load_file(other / UNET_WEIGHTS)
    assert a.keys() == b.keys()
    weights = [k for k in a if k.endswith(".weight") and a[k].dim() > 1]
    assert weights
    assert all(not torch.equal(a[k], b[k]) for k in weights)


def test_build_does_not_disturb_global_rng(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    save_tiny_pipeline(tmp_path / "tiny", seed=5)
    assert torch.equal(torch.rand(4), expected)


def test_resolve_pretrained(tiny_sd_path: Path) -> None:
    assert TINY_MODEL_NAME == "tiny-sd"
    assert Path(resolve_pretrained("tiny-sd")) == tiny_sd_path
    assert resolve_pretrained("/some/local/folder") == "/some/local/folder"
    # Offline (as tests run), other names are hub ids that are not cached: one clear error.
    for other in ("runwayml/stable-diffusion-v1-5", "tiny-sd-2", "Tiny-SD"):
        with pytest.raises(HubUnavailableError, match="not in the local Hugging Face cache"):
            resolve_pretrained(other)


@pytest.fixture(scope="module")
def tokenizer(tiny_sd_path: Path) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(tiny_sd_path / "tokenizer")


@pytest.mark.parametrize("word", DREAMBENCH_ONE_WORD_CLASSES)
def test_class_words_are_single_tokens(tokenizer: CLIPTokenizer, word: str) -> None:
    assert tokenizer.tokenize(word) == [word + "</w>"]
    assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1


def test_load_components_error_names_the_ways_to_load() -> None:
    with pytest.raises(OSError) as error:
        load_components("no/such-model")
    message = str(error.value)
    assert "no/such-model" in message
    assert "tiny-sd" in message
    assert "local folder" in message


def test_tiny_clip_shares_the_tiny_text_encoder(tiny_sd_path: Path) -> None:
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor, CLIPTextModel

    folder = resolve_pretrained("tiny-clip")
    clip = CLIPModel.from_pretrained(folder)
    processor = CLIPProcessor.from_pretrained(folder)
    encoder = CLIPTextModel.from_pretrained(tiny_sd_path / "text_encoder")
    ids = processor.tokenizer(["a photo of a dog"], return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(clip.text_model(ids).last_hidden_state, encoder(ids).last_hidden_state)
    pixels = processor(images=[Image.new("RGB", (50, 40))], return_tensors="pt").pixel_values
    assert pixels.shape == (1, 3, 32, 32)
    assert clip.text_projection.out_features == clip.visual_projection.out_features

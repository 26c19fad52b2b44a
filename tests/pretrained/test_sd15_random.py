"""sd15-random: SD 1.5's published shapes (the 4 GB build itself is left to the benchmark)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from pretrained.sd15_random import (
    SD15_TEXT,
    SD15_UNET,
    SD15_VAE,
    SD15_VOCAB_SIZE,
    pad_vocabulary,
)
from pretrained.tiny_tokenizer import write_tiny_clip_tokenizer

PROMPTS = ["a photo of a dog", "a cat wearing a red hat on the beach", "<v1> toy"]


def test_the_padded_vocabulary_has_sd_size_and_tokenizes_as_before(tmp_path: Path) -> None:
    write_tiny_clip_tokenizer(tmp_path / "plain")
    write_tiny_clip_tokenizer(tmp_path / "padded")
    pad_vocabulary(tmp_path / "padded", SD15_VOCAB_SIZE)
    plain = CLIPTokenizer.from_pretrained(tmp_path / "plain")
    padded = CLIPTokenizer.from_pretrained(tmp_path / "padded")
    assert len(padded) == SD15_VOCAB_SIZE
    # CLIP's special ids: start 49406, end 49407, the last two rows.
    assert (padded.bos_token_id, padded.eos_token_id) == (49406, 49407)
    for prompt in PROMPTS:
        assert padded.tokenize(prompt) == plain.tokenize(prompt)


def test_the_shapes_have_sd15s_published_parameter_counts() -> None:
    # Built on the meta device: shapes only, no memory, no time.
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD15_VAE)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=SD15_VOCAB_SIZE, **SD15_TEXT))
    counts = [sum(p.numel() for p in m.parameters()) for m in (unet, vae, text)]
    assert counts == [859_520_964, 83_653_863, 123_060_480]

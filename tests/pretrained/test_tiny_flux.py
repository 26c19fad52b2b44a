"""tiny-flux and tiny-flux-schnell load with diffusers' own FluxPipeline and keep FLUX.1's
traits: the guidance embedding of dev only, the VAE's shift, T5's row padding and tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import FluxPipeline
from transformers import AutoTokenizer, T5TokenizerFast

from pretrained.resolve import BUILT_IN, resolve_pretrained
from pretrained.tiny_flux import TINY_FLUX_NAME, TINY_FLUX_SCHNELL_NAME
from pretrained.tiny_sd import TINY_RESOLUTION
from pretrained.tiny_t5_tokenizer import write_tiny_t5_tokenizer

PROMPT = "a photo of a dog wearing a headphone"
SUBFOLDERS = (
    "scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "transformer", "vae",
)  # fmt: skip


@pytest.fixture(scope="module", params=[TINY_FLUX_NAME, TINY_FLUX_SCHNELL_NAME])
def flux(request: pytest.FixtureRequest, tiny_flux_path: Path) -> tuple[str, FluxPipeline]:
    """Each variant, found by its name as a model option would, loaded the ordinary way."""
    folder = resolve_pretrained(request.param)
    if request.param == TINY_FLUX_NAME:
        assert Path(folder) == tiny_flux_path
    pipe = FluxPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return request.param, pipe


def test_both_names_are_built_in() -> None:
    assert {TINY_FLUX_NAME, TINY_FLUX_SCHNELL_NAME} <= set(BUILT_IN)


def test_folder_has_flux_layout(tiny_flux_path: Path) -> None:
    index = json.loads((tiny_flux_path / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"
    assert index["tokenizer_2"] == ["transformers", "T5TokenizerFast"]
    for name in SUBFOLDERS:
        assert (tiny_flux_path / name).is_dir() and name in index, name


def test_the_variants_differ_as_dev_and_schnell_do(flux: tuple[str, FluxPipeline]) -> None:
    name, pipe = flux
    dev = name == TINY_FLUX_NAME
    assert pipe.transformer.config.guidance_embeds is dev
    scheduler = pipe.scheduler.config
    assert scheduler.use_dynamic_shifting is dev and scheduler.shift == (3.0 if dev else 1.0)
    assert (scheduler.base_shift, scheduler.max_shift) == (0.5, 1.15)
    assert (scheduler.base_image_seq_len, scheduler.max_image_seq_len) == (256, 4096)


def test_the_components_are_wired_as_flux_s(flux: tuple[str, FluxPipeline]) -> None:
    _, pipe = flux
    transformer, vae = pipe.transformer.config, pipe.vae.config
    assert transformer.joint_attention_dim == pipe.text_encoder_2.config.d_model
    assert transformer.pooled_projection_dim == pipe.text_encoder.config.hidden_size
    assert sum(transformer.axes_dims_rope) == transformer.attention_head_dim
    # 2x2 patches of 16-channel latents packed into each token.
    assert vae.latent_channels == 16 and transformer.in_channels == 4 * vae.latent_channels
    assert (vae.scaling_factor, vae.shift_factor) == (0.3611, 0.1159)
    assert not vae.use_quant_conv and not vae.use_post_quant_conv
    assert pipe.text_encoder_2.config.feed_forward_proj == "gated-gelu"
    assert pipe.tokenizer.model_max_length == 77


def test_a_two_step_generation_gives_finite_images(flux: tuple[str, FluxPipeline]) -> None:
    _, pipe = flux
    images = pipe(
        PROMPT, num_inference_steps=2, height=TINY_RESOLUTION, width=TINY_RESOLUTION,
        output_type="pt", generator=torch.Generator().manual_seed(0),
    ).images  # fmt: skip
    assert images.shape == (1, 3, TINY_RESOLUTION, TINY_RESOLUTION)
    assert torch.isfinite(images).all()


def test_t5_has_more_embedding_rows_than_tokens(flux: tuple[str, FluxPipeline]) -> None:
    # Real T5: 32,100 tokens, 32,128 rows; methods that add tokens must not shrink the table.
    _, pipe = flux
    rows, tokens = pipe.text_encoder_2.config.vocab_size, len(pipe.tokenizer_2)
    assert rows % 128 == 0 and tokens < rows < tokens + 128
    assert pipe.text_encoder_2.get_input_embeddings().num_embeddings == rows


def test_the_t5_tokenizer_round_trips_a_prompt(tiny_flux_path: Path) -> None:
    for tokenizer in (
        T5TokenizerFast.from_pretrained(tiny_flux_path / "tokenizer_2"),
        AutoTokenizer.from_pretrained(tiny_flux_path / "tokenizer_2"),
    ):
        ids = tokenizer(PROMPT).input_ids
        assert tokenizer.unk_token_id not in ids and ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids, skip_special_tokens=True) == PROMPT
        assert tokenizer.convert_ids_to_tokens(ids)[:3] == ["▁a", "▁photo", "▁of"]
        # T5's layout: <pad> 0, </s> 1, <unk> 2, sentinels last in reverse.
        assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
        assert tokenizer.convert_tokens_to_ids("<extra_id_0>") == len(tokenizer) - 1


def test_dreambench_words_tokenize_without_unknowns(tiny_flux_path: Path) -> None:
    tokenizer = T5TokenizerFast.from_pretrained(tiny_flux_path / "tokenizer_2")
    for word in "sks person style backpack cat dog headphone sunglasses teapot vase".split():
        assert tokenizer.tokenize(word) == [f"▁{word}"], word
    ids = tokenizer("A <v1> Toy, 3D-rendered: {50%}!").input_ids
    assert tokenizer.unk_token_id not in ids  # every printable ASCII character has a piece


def test_the_t5_tokenizer_is_the_same_on_every_build(tmp_path: Path) -> None:
    for name in ("first", "second"):
        write_tiny_t5_tokenizer(tmp_path / name)
    vocab = [json.loads((tmp_path / n / "tokenizer.json").read_text())["model"]["vocab"]
             for n in ("first", "second")]  # fmt: skip
    assert vocab[0] == vocab[1]

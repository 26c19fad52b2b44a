"""flux-random: FLUX.1-dev's published shapes (the 67 GB build itself is left to the benchmark),
counted on the meta device, and the per-block sizes that a reduced-depth build extrapolates by."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import CLIPTokenizer, T5TokenizerFast

from pretrained.flux_random import (
    FLUX_RANDOM_NAME,
    PUBLISHED_PARAMETERS,
    T5_TOKENIZER_SIZE,
    T5_VOCAB_SIZE,
    flux_builders,
    meta_parameters,
)
from pretrained.resolve import BUILT_IN
from pretrained.tiny_t5_tokenizer import write_tiny_t5_tokenizer
from pretrained.tiny_tokenizer import write_tiny_clip_tokenizer

# Sizes of one block of each kind at FLUX.1-dev's width (3072) and of one T5-XXL layer.
DOUBLE_BLOCK = 339_831_296
SINGLE_BLOCK = 141_591_808
T5_LAYER = 192_946_176


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> CLIPTokenizer:
    folder = tmp_path_factory.mktemp("clip-tokenizer")
    write_tiny_clip_tokenizer(folder)
    return CLIPTokenizer.from_pretrained(folder)


def test_flux_random_components_have_the_published_parameter_counts(
    tokenizer: CLIPTokenizer,
) -> None:
    counts = {name: meta_parameters(build) for name, build in flux_builders(tokenizer).items()}
    assert counts == PUBLISHED_PARAMETERS
    # FLUX.1-dev: a 12B transformer; T5-XXL's encoder 4.76B; CLIP-L's text 123M; the VAE 84M.
    assert round(counts["transformer"] / 1e9, 1) == 11.9
    assert round(counts["text_encoder_2"] / 1e9, 2) == 4.76
    assert FLUX_RANDOM_NAME in BUILT_IN


def test_a_reduced_depth_build_extrapolates_to_the_full_size(tokenizer: CLIPTokenizer) -> None:
    def transformer(double: int, single: int) -> int:
        return meta_parameters(flux_builders(tokenizer, double, single)["transformer"])

    reduced = transformer(1, 1)
    assert transformer(2, 1) - reduced == DOUBLE_BLOCK
    assert transformer(1, 2) - reduced == SINGLE_BLOCK
    full = reduced + 18 * DOUBLE_BLOCK + 37 * SINGLE_BLOCK
    assert full == PUBLISHED_PARAMETERS["transformer"]

    def t5(layers: int) -> int:
        return meta_parameters(flux_builders(tokenizer, t5_layers=layers)["text_encoder_2"])

    assert t5(2) - t5(1) == T5_LAYER
    assert t5(1) + 23 * T5_LAYER == PUBLISHED_PARAMETERS["text_encoder_2"]


def test_the_padded_t5_tokenizer_has_t5s_size_and_tokenizes_as_before(tmp_path: Path) -> None:
    write_tiny_t5_tokenizer(tmp_path / "plain")
    size = write_tiny_t5_tokenizer(tmp_path / "padded", size=T5_TOKENIZER_SIZE)
    plain = T5TokenizerFast.from_pretrained(tmp_path / "plain")
    padded = T5TokenizerFast.from_pretrained(tmp_path / "padded")
    assert size == len(padded) == T5_TOKENIZER_SIZE < T5_VOCAB_SIZE
    # T5's sentinel ids: <extra_id_99> 32000 ... <extra_id_0> 32099.
    assert padded.convert_tokens_to_ids(["<extra_id_99>", "<extra_id_0>"]) == [32000, 32099]
    for prompt in ("a photo of a dog wearing a headphone", "a sks person in the style of <v1>"):
        assert padded(prompt).input_ids == plain(prompt).input_ids

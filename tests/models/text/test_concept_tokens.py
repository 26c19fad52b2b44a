"""Concept tokens: the embedding lookup, untouched base behaviour, gradients, expansion, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from core.concept import ConceptSpec, vector_token_names
from models import TextualInversion
from models.text.concept_tokens import ConceptEmbedding, ConceptTokens


def _fresh_tokenizer(path: Path) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(path / "tokenizer")


def _fresh_text_encoder(path: Path) -> CLIPTextModel:
    return CLIPTextModel.from_pretrained(path / "text_encoder").eval()


@pytest.fixture(scope="module")
def one_concept() -> TextualInversion:
    """Read-only: <v1> toy, one vector."""
    return TextualInversion(concepts=[ConceptSpec("<v1>", "toy")])


@pytest.fixture(scope="module")
def two_concepts() -> TextualInversion:
    """<v1> toy and <v2> dog, two vectors each; tests reset its gradients."""
    return TextualInversion(
        concepts=[ConceptSpec("<v1>", "toy"), ConceptSpec("<v2>", "dog")], num_vectors=2
    )


@pytest.fixture(scope="module")
def three_vectors() -> TextualInversion:
    return TextualInversion(concepts=[ConceptSpec("<v1>", "toy")], num_vectors=3)


# ----- (a) the lookup ------------------------------------------------------------------------
def test_concept_embedding_reads_base_rows_and_vectors() -> None:
    torch.manual_seed(0)
    base = nn.Embedding(10, 6)
    embedding = ConceptEmbedding(base, num_vectors=3)
    with torch.no_grad():
        embedding.vectors.copy_(torch.randn(3, 6))
    ids = torch.tensor([[0, 9, 10, 3, 12], [11, 11, 5, 10, 9]])
    expected = torch.empty(2, 5, 6)
    for b in range(ids.shape[0]):
        for j in range(ids.shape[1]):
            i = int(ids[b, j])
            expected[b, j] = base.weight[i] if i < 10 else embedding.vectors[i - 10]
    out = embedding(ids)
    assert out.shape == (2, 5, 6)
    assert torch.equal(out, expected)
    assert embedding.weight is base.weight


def test_concept_embedding_base_only_ids_equal_base() -> None:
    base = nn.Embedding(7, 4)
    embedding = ConceptEmbedding(base, num_vectors=2)
    ids = torch.tensor([[0, 1, 6, 2]])
    assert torch.equal(embedding(ids), base(ids))


# ----- (b) prompts without the concept token are encoded exactly as before -----------------
def test_prompt_without_concept_matches_untouched_encoder(
    one_concept: TextualInversion, tiny_sd_path: Path
) -> None:
    prompts = ["a photo of a toy", "a red dog on the beach", ""]
    tokenizer = _fresh_tokenizer(tiny_sd_path)
    reference_ids = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        reference = _fresh_text_encoder(tiny_sd_path)(reference_ids).last_hidden_state
        encoded = one_concept.encode_text(prompts)
    assert torch.equal(encoded.input_ids, reference_ids)
    assert torch.equal(encoded.hidden_states, reference)


def test_fresh_concept_encodes_like_its_initializer_word(
    one_concept: TextualInversion,
) -> None:
    # Initialised from "toy", so "<v1>" reads exactly the "toy" row; the encodings of
    # "a <v1>" and "a toy" then agree bitwise (the lookup path is transparent).
    with torch.no_grad():
        concept = one_concept.encode_text(["a <v1>"]).hidden_states
        word = one_concept.encode_text(["a toy"]).hidden_states
    assert torch.equal(concept, word)
    ids = one_concept.encode_text(["a <v1>"]).input_ids
    assert one_concept.tokenizer.convert_tokens_to_ids("<v1>") in ids[0].tolist()


# ----- (c) gradients reach only the concept vectors ------------------------------------------
def test_gradients_reach_only_the_used_concept_vectors(two_concepts: TextualInversion) -> None:
    module = two_concepts
    vectors = module.concept_tokens.embedding.vectors
    vectors.grad = None
    loss = module.encode_text(["a photo of a <v1> toy"]).hidden_states.pow(2).sum()
    loss.backward()
    try:
        assert vectors.requires_grad
        assert vectors.grad is not None
        row_norms = vectors.grad.norm(dim=1)
        assert (row_norms[:2] > 0).all()  # <v1> and <v1>_1
        assert torch.equal(row_norms[2:], torch.zeros(2))  # <v2>, <v2>_1 untouched
        base = module.concept_tokens.embedding.base
        assert base.weight.requires_grad is False
        assert base.weight.grad is None
        for component in (module.text_encoder, module.unet, module.vae):
            for name, param in component.named_parameters():
                if param is vectors:
                    continue
                assert param.requires_grad is False, name
                assert param.grad is None, name
        trainable = [p for p in module.parameters() if p.requires_grad]
        assert len(trainable) == 1 and trainable[0] is vectors
    finally:
        vectors.grad = None


def test_gradients_follow_the_second_concept(two_concepts: TextualInversion) -> None:
    vectors = two_concepts.concept_tokens.embedding.vectors
    vectors.grad = None
    two_concepts.encode_text(["a <v2> dog"]).hidden_states.sum().backward()
    try:
        row_norms = vectors.grad.norm(dim=1)
        assert torch.equal(row_norms[:2], torch.zeros(2))
        assert (row_norms[2:] > 0).all()
    finally:
        vectors.grad = None


# ----- (d) expansion -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "prompt,expected",
    [
        ("a <v1> toy", "a <v1> <v1>_1 <v1>_2 toy"),
        ("<v1>", "<v1> <v1>_1 <v1>_2"),
        ("<v1> and <v1>", "<v1> <v1>_1 <v1>_2 and <v1> <v1>_1 <v1>_2"),
        ("a <v10> toy", "a <v10> toy"),
        ("a x<v1> toy", "a x<v1> toy"),
        ("a photo of a toy", "a photo of a toy"),
    ],
)
def test_expand(three_vectors: TextualInversion, prompt: str, expected: str) -> None:
    assert three_vectors.concept_tokens.expand(prompt) == expected


def test_expanded_prompt_reads_all_vectors_in_order(three_vectors: TextualInversion) -> None:
    ids = three_vectors.encode_text(["a <v1> toy"]).input_ids[0].tolist()
    names = vector_token_names("<v1>", 3)
    assert names == ["<v1>", "<v1>_1", "<v1>_2"]
    new_ids = three_vectors.tokenizer.convert_tokens_to_ids(names)
    start = ids.index(new_ids[0])
    assert ids[start : start + 3] == new_ids
    base_size = three_vectors.concept_tokens.embedding.base_vocab_size
    assert new_ids == list(range(base_size, base_size + 3))


def test_single_vector_expand_is_identity(one_concept: TextualInversion) -> None:
    assert one_concept.concept_tokens.expand("a <v1> toy") == "a <v1> toy"


def test_expand_before_punctuation(three_vectors: TextualInversion) -> None:
    assert three_vectors.concept_tokens.expand("a <v1>, toy") == "a <v1> <v1>_1 <v1>_2, toy"


# ----- (e) initialisation --------------------------------------------------------------------
def test_vectors_start_from_the_initializer_row(three_vectors: TextualInversion) -> None:
    tokenizer = three_vectors.tokenizer
    (toy_id,) = tokenizer("toy", add_special_tokens=False).input_ids
    row = three_vectors.concept_tokens.embedding.base.weight[toy_id]
    vectors = three_vectors.concept_tokens.vectors_of(0)
    assert vectors.shape == (3, row.shape[0])
    for vector in vectors:
        assert torch.equal(vector, row)


def test_initializer_word_overrides_class_word(tiny_sd_path: Path) -> None:
    tokenizer = _fresh_tokenizer(tiny_sd_path)
    text_encoder = _fresh_text_encoder(tiny_sd_path)
    base_weight = text_encoder.get_input_embeddings().weight.detach().clone()
    concepts = [ConceptSpec("<a>", "toy", initializer_word="bear"), ConceptSpec("<b>", "dog")]
    tokens = ConceptTokens(tokenizer, text_encoder, concepts, num_vectors=2)
    (bear_id,) = tokenizer("bear", add_special_tokens=False).input_ids
    (dog_id,) = tokenizer("dog", add_special_tokens=False).input_ids
    assert torch.equal(tokens.vectors_of(0), base_weight[[bear_id, bear_id]])
    assert torch.equal(tokens.vectors_of(1), base_weight[[dog_id, dog_id]])
    assert text_encoder.get_input_embeddings() is tokens.embedding


# ----- (f) errors ----------------------------------------------------------------------------
def _make(path: Path, concepts: list[ConceptSpec], num_vectors: int = 1) -> ConceptTokens:
    return ConceptTokens(_fresh_tokenizer(path), _fresh_text_encoder(path), concepts, num_vectors)


@pytest.mark.parametrize(
    "concepts,num_vectors,bad",
    [
        ([ConceptSpec("q", "toy")], 1, "q"),  # a byte symbol of the vocabulary
        ([ConceptSpec("el", "toy")], 1, "el"),  # a word piece (merge) of the vocabulary
        ([ConceptSpec("dog", "dog")], 1, "dog"),  # a whole word: "dog</w>" in CLIP's vocab
        ([ConceptSpec("<v1>", "toy"), ConceptSpec("<v1>", "dog")], 1, "<v1>"),
        ([ConceptSpec("<w>_1", "toy"), ConceptSpec("<w>", "dog")], 2, "<w>_1"),
    ],
)
def test_existing_token_is_rejected(
    tiny_sd_path: Path, concepts: list[ConceptSpec], num_vectors: int, bad: str
) -> None:
    with pytest.raises(ValueError, match="already exists") as error:
        _make(tiny_sd_path, concepts, num_vectors)
    assert repr(bad) in str(error.value)


@pytest.mark.parametrize(
    "concepts,bad,twin",
    [
        ([ConceptSpec("<v1>", "toy"), ConceptSpec("<V1>", "dog")], "<v1>", "<V1>"),
        ([ConceptSpec("<V1>", "toy"), ConceptSpec("<v1>", "dog")], "<V1>", "<v1>"),
        ([ConceptSpec("Dog", "toy")], "Dog", "dog</w>"),  # the vocabulary's word, in capitals
    ],
)
def test_tokens_that_differ_only_in_case_are_rejected(
    tiny_sd_path: Path, concepts: list[ConceptSpec], bad: str, twin: str
) -> None:
    """CLIP's tokenizer lowercases: both tokens would read one id and one would never train."""
    with pytest.raises(ValueError, match="differ in more than case") as error:
        _make(tiny_sd_path, concepts)
    assert repr(bad) in str(error.value) and repr(twin) in str(error.value)


@pytest.mark.parametrize("word", ["hello world", "qzxv"])
def test_multi_token_initializer_is_rejected(tiny_sd_path: Path, word: str) -> None:
    with pytest.raises(ValueError, match="single token") as error:
        _make(tiny_sd_path, [ConceptSpec("<v1>", "toy", initializer_word=word)])
    assert repr(word) in str(error.value)


def test_multi_token_class_word_without_initializer_is_rejected(tiny_sd_path: Path) -> None:
    with pytest.raises(ValueError, match="single token") as error:
        _make(tiny_sd_path, [ConceptSpec("<v1>", "qzxv")])
    assert "'qzxv'" in str(error.value)


def test_failed_check_leaves_tokenizer_unchanged(tiny_sd_path: Path) -> None:
    tokenizer = _fresh_tokenizer(tiny_sd_path)
    size = len(tokenizer)
    with pytest.raises(ValueError):
        ConceptTokens(
            tokenizer,
            _fresh_text_encoder(tiny_sd_path),
            [ConceptSpec("<v1>", "toy", initializer_word="qzxv")],
        )
    assert len(tokenizer) == size


def test_zero_vectors_rejected(tiny_sd_path: Path) -> None:
    with pytest.raises(ValueError, match="num_vectors"):
        _make(tiny_sd_path, [ConceptSpec("<v1>", "toy")], num_vectors=0)


def test_empty_concepts_rejected(tiny_sd_path: Path) -> None:
    with pytest.raises(ValueError, match="concept"):
        _make(tiny_sd_path, [])


def test_module_errors() -> None:
    with pytest.raises(ValueError, match="concepts"):
        TextualInversion(concepts=None)
    with pytest.raises(ValueError, match="concepts"):
        TextualInversion(concepts=[])
    with pytest.raises(ValueError, match="num_vectors"):
        TextualInversion(concepts=[ConceptSpec("<v1>", "toy")], num_vectors=0)
    with pytest.raises(ValueError, match="single token"):
        TextualInversion(concepts=[ConceptSpec("<v1>", "qzxv")])


def test_module_rejects_a_vocabulary_word_as_concept_token() -> None:
    with pytest.raises(ValueError, match="already exists") as error:
        TextualInversion(concepts=[ConceptSpec("dog", "toy")])
    assert "'dog'" in str(error.value)

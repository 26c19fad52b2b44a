"""The MLM contextualizer: its shape, its pretraining run, its export and the [MASK] lookup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import optimizer_with_lr, tiny_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors.torch import load_file
from torch import nn

from components.contextualizer.network import (
    Contextualizer,
    ContextualizerConfig,
    padding_after_eos,
)
from components.contextualizer.store import (
    CONFIG_FILE,
    check_compatible,
    default_contextualizer_dir,
    load_contextualizer,
    pretraining_command,
)
from components.text_masking import trim_padding
from core.concept import ConceptSpec
from datamodules.context_corpus import ContextCorpusDataModule
from models import TextualInversion
from models.pretraining.contextualizer import ContextualizerPretraining


@pytest.fixture(scope="module")
def pretraining() -> ContextualizerPretraining:
    torch.manual_seed(0)
    return ContextualizerPretraining(dropout=0.0, optimizer=optimizer_with_lr(3e-3))


def test_shape_is_four_post_ln_layers_of_four_heads_and_a_vocab_plus_one_head(
    pretraining: ContextualizerPretraining,
) -> None:
    psi = pretraining.contextualizer
    hidden = pretraining.text_encoder.config.hidden_size
    layers = list(psi.layers.layers)
    assert len(layers) == 4
    assert all(layer.self_attn.num_heads == 4 and not layer.norm_first for layer in layers)
    assert psi.head.out_features == pretraining.vocab_size + 1 == len(pretraining.tokenizer) + 1
    assert psi(torch.randn(2, 7, hidden)).shape == (2, 7, pretraining.vocab_size + 1)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        Contextualizer(ContextualizerConfig(hidden_size=30, vocab_size=10, num_heads=4))


def test_forward_is_what_torch_transformer_layers_compute() -> None:
    """psi's own layer path equals nn.TransformerEncoder's on the same weights (eval mode, and
    training mode without dropout) at every unpadded position; ``positions`` picks rows of
    the full logits."""
    torch.manual_seed(0)
    psi = Contextualizer(ContextualizerConfig(hidden_size=16, vocab_size=11, dropout=0.0))
    states = torch.randn(3, 7, 16, requires_grad=True)
    padding = torch.tensor([[False] * 7, [False] * 4 + [True] * 3, [False] * 2 + [True] * 5])
    for mode in (False, True):
        psi.train(mode)
        expected = psi.head(psi.layers(states, src_key_padding_mask=padding))
        logits = psi(states, padding_mask=padding)
        torch.testing.assert_close(logits[~padding], expected[~padding], rtol=1e-5, atol=1e-6)
    picked = torch.zeros(3, 7, dtype=torch.bool)
    picked[0, 2] = picked[1, 3] = picked[2, 1] = True
    at = psi(states, padding_mask=padding, positions=picked)
    torch.testing.assert_close(at, psi(states, padding_mask=padding)[picked])
    # Gradients reach the input through the own path as through torch's.
    (grad,) = torch.autograd.grad(at.sum(), states)
    expected = psi.head(psi.layers(states, src_key_padding_mask=padding))[picked]
    (expected_grad,) = torch.autograd.grad(expected.sum(), states)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-6)


def test_dropout_acts_in_training_mode_only() -> None:
    torch.manual_seed(0)
    psi = Contextualizer(ContextualizerConfig(hidden_size=16, vocab_size=11, dropout=0.5))
    states = torch.randn(2, 5, 16)
    psi.eval()
    assert torch.equal(psi(states), psi(states))
    psi.train()
    assert not torch.equal(psi(states), psi(states))


def test_trimming_padding_leaves_the_prompt_states_unchanged(
    pretraining: ContextualizerPretraining,
) -> None:
    """CLIP is causal and psi masks padding, so cutting trailing padding is exact."""
    tokenizer, eos = pretraining.tokenizer, pretraining.tokenizer.eos_token_id
    ids = tokenizer(
        ["a photo of a dog on the beach", "a cat"], padding="max_length", return_tensors="pt"
    ).input_ids
    short = trim_padding(ids, eos)
    assert short.shape[1] < ids.shape[1] and (short[:, -1] == eos).all()
    pretraining.eval()
    with torch.no_grad():
        full = pretraining.text_encoder(ids).last_hidden_state
        cut = pretraining.text_encoder(short).last_hidden_state
        psi = pretraining.contextualizer
        logits_full = psi(full, padding_after_eos(ids, eos))
        logits_cut = psi(cut, padding_after_eos(short, eos))
    keep = ~padding_after_eos(short, eos)
    torch.testing.assert_close(cut[keep], full[:, : short.shape[1]][keep])
    torch.testing.assert_close(logits_cut[keep], logits_full[:, : short.shape[1]][keep])


def test_pretraining_learns_trains_only_psi_and_mask_and_exports(
    pretraining: ContextualizerPretraining, tmp_path: Path
) -> None:
    module = pretraining
    module.export_dir = str(tmp_path / "psi")
    corpus = ContextCorpusDataModule(prompts_per_category=500, val_prompts=32, batch_size=8)
    encoder_before = {k: v.clone() for k, v in module.text_encoder.state_dict().items()}
    mask_before = module.mask_vector.detach().clone()
    val_prompts = [corpus.val_items[i][0].format("dog") for i in range(32)]
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        before = module.mlm_step(val_prompts, generator)["loss"]
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=30)
    trainer = tiny_trainer(tmp_path, max_steps=30, callbacks=[checkpoint])
    trainer.fit(module, datamodule=corpus)
    with torch.no_grad():
        after = module.mlm_step(val_prompts, torch.Generator().manual_seed(0))["loss"]
    assert float(after) < float(before) - 0.5  # held-out prompts, the same masks
    encoder_after = module.text_encoder.state_dict()
    changed = {k for k, v in encoder_before.items() if not torch.equal(v, encoder_after[k])}
    assert changed == {"embeddings.token_embedding.vectors"}  # the [MASK] row, nothing else
    assert not torch.equal(module.mask_vector, mask_before)
    # The checkpoint keeps psi and [MASK] only, not the frozen encoder.
    saved = torch.load(next((tmp_path / "ckpt").glob("*.ckpt")), weights_only=True)
    assert set(saved["state_dict"]) == {n for n, p in module.named_parameters() if p.requires_grad}
    in_encoder = [k for k in saved["state_dict"] if k.startswith("text_encoder.")]
    assert len(in_encoder) == 1 and in_encoder[0].endswith("token_embedding.vectors")  # [MASK]
    fresh = ContextualizerPretraining()
    fresh.load_state_dict(saved["state_dict"], strict=fresh.strict_loading)  # as a resume does
    assert torch.equal(fresh.mask_vector, module.mask_vector)
    assert torch.equal(fresh.contextualizer.head.weight, module.contextualizer.head.weight)
    # The end of training exported psi where asked, with what it was trained for.
    psi, mask, info = load_contextualizer(tmp_path / "psi")
    assert info["pretrained_model_name_or_path"] == "tiny-sd" and info["global_step"] == 30
    torch.testing.assert_close(mask, module.mask_vector.detach().reshape(-1))
    for name, tensor in module.contextualizer.state_dict().items():
        assert torch.equal(psi.state_dict()[name], tensor)
    assert set(load_file(tmp_path / "psi" / "contextualizer.safetensors")) >= {"mask_vector"}


def test_default_place_is_one_folder_per_base_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PERSONALIZE_CACHE", str(tmp_path))
    tiny = default_contextualizer_dir("tiny-sd")
    sd = default_contextualizer_dir("stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert tiny == tmp_path / "runs" / "contextualizer" / "tiny-sd"
    assert sd.parent == tiny.parent and sd != tiny
    assert pretraining_command("tiny-sd") == (
        "python train.py fit --config configs/diverse_context/contextualizer.yaml "
        "--config configs/tiny.yaml"
    )
    assert pretraining_command("/models/sd21").endswith(
        "--model.init_args.pretrained_model_name_or_path /models/sd21"
    )


def test_loading_checks_the_text_encoder_it_was_trained_for(
    pretraining: ContextualizerPretraining, tmp_path: Path
) -> None:
    folder = tmp_path / "psi"
    pretraining.export(folder)
    _, _, info = load_contextualizer(folder)
    check_compatible(info, pretraining.tokenizer, pretraining.text_encoder, folder)  # no error
    for key, value, message in [
        ("hidden_size", 64, "expects hidden size 64"),
        ("tokenizer_sha256", "0" * 64, "trained with another tokenizer"),
    ]:
        changed = dict(info, **{key: value})
        with pytest.raises(ValueError, match=message):
            check_compatible(changed, pretraining.tokenizer, pretraining.text_encoder, folder)
    with pytest.warns(UserWarning, match="other text-encoder weights"):
        changed = dict(info, text_encoder_sha256="0" * 64)
        check_compatible(changed, pretraining.tokenizer, pretraining.text_encoder, folder)
    assert json.loads((folder / CONFIG_FILE).read_text())["num_heads"] == 4


def test_extra_vectors_embed_like_an_added_embedding_row() -> None:
    """Independent check of the [MASK] swap: a text encoder whose matrix has the concept and
    [MASK] rows appended must give the same states as the module's swapped-in lookup."""
    module = TextualInversion(concepts=[ConceptSpec("<v1>", "dog")])
    mask = torch.randn(1, module.text_encoder.config.hidden_size)
    ids = module.tokenize(["a photo of a <v1> dog on the beach"])
    mask_id = len(module.tokenizer)
    ids[0, 3] = mask_id
    with torch.no_grad():
        ours = module.encode_token_ids(ids, extra_vectors=mask).hidden_states
        lookup = module.text_encoder.get_input_embeddings()
        rows = torch.cat([lookup.weight, lookup.vectors, mask])
        reference = nn.Embedding.from_pretrained(rows)
        module.text_encoder.set_input_embeddings(reference)
        try:
            expected = module.text_encoder(ids).last_hidden_state
        finally:
            module.text_encoder.set_input_embeddings(lookup)
    torch.testing.assert_close(ours, expected)
    # Outside the call the lookup is the concept one again, without [MASK].
    assert module.text_encoder.get_input_embeddings() is lookup

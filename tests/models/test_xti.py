"""XTI / P+: per-layer tokens reach their own layers, export round-trips, training and resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from baseline_checks import (
    assert_only_trainable_changed,
    assert_resume_is_exact,
    assert_trained_stay_fp32_under_bf16,
)
from diffusers import DDIMScheduler, StableDiffusionPipeline
from diffusers.models.attention_processor import AttnProcessor2_0
from export_sampling import module_sample, pipe_sample
from helpers import optimizer_with_lr, tiny_datamodule
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from core.concept import ConceptSpec
from models import XTI
from models.xti import XTI_EMBEDS, load_xti, xti_pipeline, xti_prompt_embeds

PROMPT = "a photo of a <v1> toy"
TINY_LAYERS = [  # the tiny UNet's spatial transformers (one cross-attention each), forward order
    "down_blocks.0.attentions.0",
    "mid_block.attentions.0",
    "up_blocks.1.attentions.0",
    "up_blocks.1.attentions.1",
]
STEPS, GUIDANCE = 3, 6.0


def _randomise(module: XTI, seed: int) -> None:
    """Distinct random vectors per layer, so every layer's condition differs."""
    vectors = module.concept_tokens.embedding.vectors
    with torch.no_grad():
        vectors.copy_(torch.randn(vectors.shape, generator=torch.Generator().manual_seed(seed)))


@pytest.fixture(scope="module")
def xti() -> XTI:
    module = XTI(concepts=[ConceptSpec("<v1>", "toy")])
    _randomise(module, seed=0)
    return module


@pytest.fixture(scope="module")
def exported(xti: XTI, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("xti-export")
    assert xti.export(folder) == [folder / XTI_EMBEDS]
    return folder


def _attention_modules(module: XTI) -> list[torch.nn.Module]:
    names = [f"{n}.transformer_blocks.0.attn2" for n in module.layer_names]
    return [module.unet.get_submodule(name) for name in names]


def _capture(module: XTI, prompt: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each cross-attention layer's input and output in one UNet call on ``prompt``."""
    inputs: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []

    def hook(_: Any, args: tuple[torch.Tensor, ...], kwargs: dict, out: torch.Tensor) -> None:
        inputs.append((args[0] if args else kwargs["hidden_states"]).detach().clone())
        outputs.append(out.detach().clone())

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in _attention_modules(module)]
    try:
        with torch.no_grad():
            latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
            conditioning = module.encode_text([prompt]).conditioning
            module.predict_noise(latents, torch.tensor([500]), conditioning)
    finally:
        for handle in handles:
            handle.remove()
    return inputs, outputs


# ----- the layers ----------------------------------------------------------------------------
def test_one_token_per_cross_attention_layer(xti: XTI) -> None:
    assert xti.layer_names == TINY_LAYERS
    assert xti.concept_tokens.embedding.vectors.shape == (4, 32)
    assert xti.layer_vectors(0).shape == (4, 1, 32)
    assert xti.text_layer == 1  # the middle block's layer
    # The layer copies' ids are reserved in the tokenizer, so nothing else can take them.
    assert len(xti.tokenizer) == xti.concept_tokens.embedding.base_vocab_size + 4
    encoding = xti.encode_text([PROMPT, "a toy"])
    assert encoding.hidden_states.shape == (2, 77, 32)
    assert encoding.conditioning.shape == (2, 4 * 77, 32)
    packed = encoding.conditioning.view(2, 4, 77, 32)
    assert torch.equal(packed[:, 1], encoding.hidden_states)  # text_layer's states
    assert all(not torch.equal(packed[0, 0], packed[0, i]) for i in (1, 2, 3))
    assert all(torch.equal(packed[1, 0], packed[1, i]) for i in (1, 2, 3))  # no token: shared


def test_layer_i_reads_the_states_of_token_i(xti: XTI) -> None:
    """Each layer's output equals plain attention on the states of a prompt whose token is
    that layer's vector alone (computed by a second module with every layer set to it)."""
    inputs, outputs = _capture(xti, PROMPT)
    single = XTI(concepts=[ConceptSpec("<v1>", "toy")])
    plain = AttnProcessor2_0()
    for layer, attention in enumerate(_attention_modules(xti)):
        with torch.no_grad():
            single.concept_tokens.embedding.vectors.copy_(xti.layer_vectors(0)[layer].repeat(4, 1))
            states = single.encode_text([PROMPT]).hidden_states
            expected = plain(attention, inputs[layer], encoder_hidden_states=states)
        assert torch.allclose(outputs[layer], expected, atol=1e-6), layer


@pytest.mark.parametrize("changed", range(4))
def test_changing_one_layers_vector_changes_only_that_layers_attention(
    xti: XTI, changed: int
) -> None:
    inputs, before = _capture(xti, PROMPT)
    vectors = xti.concept_tokens.embedding.vectors
    saved = vectors.detach().clone()
    try:
        with torch.no_grad():
            # A random change: a constant shift would vanish in CLIP's layer norms.
            vectors[changed] += torch.randn(32, generator=torch.Generator().manual_seed(5))
            conditioning = xti.encode_text([PROMPT]).conditioning
            after = [m(h, encoder_hidden_states=conditioning) for m, h in
                     zip(_attention_modules(xti), inputs)]  # fmt: skip
    finally:
        with torch.no_grad():
            vectors.copy_(saved)
    for layer in range(4):
        same = torch.allclose(after[layer], before[layer], atol=1e-6)
        assert same == (layer != changed), (layer, changed)


def test_states_of_a_wrong_length_are_a_clear_error(xti: XTI) -> None:
    latents = torch.zeros(1, 4, 16, 16)
    with pytest.raises(ValueError, match="got encoder states of length 100"):
        xti.predict_noise(latents, torch.tensor([10]), torch.zeros(1, 100, 32))


# ----- export and loaders --------------------------------------------------------------------
def test_export_file(xti: XTI, exported: Path) -> None:
    saved = load_file(exported / XTI_EMBEDS)
    assert list(saved) == ["<v1>"] and saved["<v1>"].shape == (4, 1, 32)
    assert saved["<v1>"].dtype == torch.float32
    assert torch.equal(saved["<v1>"], xti.layer_vectors(0).detach())
    with safe_open(str(exported / XTI_EMBEDS), framework="pt") as handle:
        assert json.loads(handle.metadata()["xti_layers"]) == TINY_LAYERS


def _images(pipe: StableDiffusionPipeline, **kwargs: Any) -> torch.Tensor:
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return pipe_sample(pipe, **kwargs)


@pytest.mark.smoke
def test_export_generates_what_the_module_generates(
    xti: XTI, exported: Path, tiny_sd_path: Path
) -> None:
    ours = module_sample(xti)
    loaded = _images(xti_pipeline(str(tiny_sd_path), exported), prompt=PROMPT)
    assert torch.allclose(ours, loaded, atol=1e-4, rtol=0), (ours - loaded).abs().max()
    # Any StableDiffusionPipeline works too, given the per-layer prompt embeddings.
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_path, safety_checker=None)
    plain = _images(pipe, prompt=PROMPT)
    assert load_xti(pipe, exported) == ["<v1>"]
    embeds = xti_prompt_embeds(pipe, [PROMPT])
    negative = xti_prompt_embeds(pipe, [""])
    again = _images(pipe, prompt=None, prompt_embeds=embeds, negative_prompt_embeds=negative)
    assert torch.allclose(ours, again, atol=1e-4, rtol=0)
    assert (ours - plain).abs().max() > 1e-2  # the per-layer tokens matter


def test_module_starts_from_saved_embeddings(xti: XTI, exported: Path) -> None:
    module = XTI(concepts=[ConceptSpec("<v1>", "toy")], init_embeddings=str(exported))
    loaded, saved = module.concept_tokens.embedding.vectors, xti.concept_tokens.embedding.vectors
    assert torch.equal(loaded, saved)


def test_an_export_naming_processors_as_earlier_versions_did_still_loads(
    xti: XTI, exported: Path, tmp_path: Path
) -> None:
    # Exports written before layers were named by their transformer list each SD 1.x layer by
    # its cross-attention processor; they hold the same layers and load the same vectors.
    processors = [f"{n}.transformer_blocks.0.attn2.processor" for n in TINY_LAYERS]
    metadata = {"xti_layers": json.dumps(processors), "xti_tokens": json.dumps(["<v1>"])}
    older = tmp_path / XTI_EMBEDS
    save_file(load_file(exported / XTI_EMBEDS), str(older), metadata=metadata)
    module = XTI(concepts=[ConceptSpec("<v1>", "toy")], init_embeddings=str(older))
    assert torch.equal(module.layer_vectors(0), xti.layer_vectors(0))


def _with_three_layers(exported: Path, target: Path) -> Path:
    """The export as if learned on a UNet with three cross-attention layers."""
    vectors = load_file(exported / XTI_EMBEDS)["<v1>"][:3].contiguous()
    metadata = {"xti_layers": json.dumps(TINY_LAYERS[:3]), "xti_tokens": json.dumps(["<v1>"])}
    save_file({"<v1>": vectors}, str(target), metadata=metadata)
    return target


def test_embeddings_for_another_layer_count_are_a_clear_error(
    exported: Path, tmp_path: Path, tiny_sd_path: Path
) -> None:
    wrong = _with_three_layers(exported, tmp_path / XTI_EMBEDS)
    message = "hold 3 per-layer vectors, but this UNet has 4 cross-attention layers"
    with pytest.raises(ValueError, match=message):
        XTI(concepts=[ConceptSpec("<v1>", "toy")], init_embeddings=str(wrong))
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_path, safety_checker=None)
    size = len(pipe.tokenizer)
    with pytest.raises(ValueError, match=message):
        load_xti(pipe, wrong)
    assert len(pipe.tokenizer) == size  # nothing was installed


# ----- training ------------------------------------------------------------------------------
def _build() -> tuple[XTI, Any]:
    datamodule = tiny_datamodule()
    module = XTI(concepts=datamodule.concepts, optimizer=optimizer_with_lr(1e-2))
    return module, datamodule


def test_only_the_per_layer_vectors_train(tmp_path: Path) -> None:
    module, datamodule = _build()
    assert module.trainable_state_keys() == {"text_encoder.embeddings.token_embedding.vectors"}
    before = assert_only_trainable_changed(module, datamodule, tmp_path)
    key = "text_encoder.embeddings.token_embedding.vectors"
    for layer in range(4):  # every layer's own vector received gradients
        assert not torch.equal(before[key][layer], module.concept_tokens.embedding.vectors[layer])


def test_resume_from_a_mid_epoch_checkpoint_is_exact(tmp_path: Path) -> None:
    assert_resume_is_exact(_build, tmp_path)


def test_trained_weights_stay_fp32_under_bf16_mixed(tmp_path: Path) -> None:
    assert_trained_stay_fp32_under_bf16(*_build(), tmp_path)


def test_token_id_path_trains_the_text_layers_copy() -> None:
    """MLM encodes token ids: its gradient must reach the same layer copy as encode_text's."""
    module = XTI(concepts=[ConceptSpec("<v1>", "toy")])
    ids = module.tokenize(["a photo of a <v1> toy"])
    by_ids = module.encode_token_ids(ids).hidden_states
    assert torch.equal(by_ids, module.encode_text(["a photo of a <v1> toy"]).hidden_states)
    by_ids.sum().backward()
    grad = module.concept_tokens.embedding.vectors.grad
    rows_per_layer = grad.shape[0] // len(module.layer_names)
    touched = {int(r) // rows_per_layer for r in grad.abs().sum(dim=1).nonzero().flatten()}
    assert touched == {module.text_layer}

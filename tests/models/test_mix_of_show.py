"""Mix-of-Show's ED-LoRA: the decomposed layer-wise embedding, what trains, exact resume, the
export diffusers generates with, the embedding-norm stop, and SPL / DDLoss on top."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from baseline_checks import assert_only_trainable_changed, assert_resume_is_exact
from diffusers import DDIMScheduler, StableDiffusionPipeline
from export_sampling import module_sample, pipe_sample
from helpers import optimizer_with_lr, tiny_datamodule, tiny_trainer
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file

from core.concept import ConceptSpec
from datamodules.extras.captions import CaptionOptions
from losses.dd_loss import DenoisingDecoupleLoss
from losses.spl import SemanticPreservationLoss
from models.lora_adapters import LORA_WEIGHTS
from models.mix_of_show import EDLoRA, edlora_pipeline, load_edlora
from models.xti import XTI_EMBEDS, load_xti, xti_pipeline, xti_prompt_embeds

PROMPT = "a photo of a <v1> toy"
LAYERS = 4  # the tiny UNet's cross-attention layers
VECTORS = "text_encoder.embeddings.token_embedding.vectors"


def build(**overrides: Any) -> tuple[EDLoRA, Any]:
    datamodule = tiny_datamodule(**overrides.pop("data", {}))
    settings: dict[str, Any] = {
        "concepts": datamodule.concepts,
        "optimizer": optimizer_with_lr(1e-2),
        "embedding_norm_threshold": None,
    }
    settings.update(overrides)
    return EDLoRA(**settings), datamodule


def randomise(module: EDLoRA, seed: int, scale: float = 0.3) -> None:
    """Nonzero adapters (B too) and distinct per-layer vectors, so every part matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if ".lora_" in name:
                param.copy_(scale * torch.randn(param.shape, generator=generator))
        vectors = module.concept_tokens.embedding.vectors
        vectors.copy_(torch.randn(vectors.shape, generator=generator))


# ----- the decomposed embedding and the adapters ---------------------------------------------
def test_two_parts_per_layer_random_and_class_initialised() -> None:
    module = EDLoRA(concepts=[ConceptSpec("<v1>", "toy")], seed=3)
    vectors = module.layer_vectors(0)
    assert vectors.shape == (LAYERS, 2, 32)
    # The random part: one N(0, 0.013^2) draw from the module's seed, in every layer.
    draw = 0.013 * torch.randn(32, generator=torch.Generator().manual_seed(3))
    for layer in range(LAYERS):
        assert torch.allclose(vectors[layer, 0], draw, atol=0, rtol=1e-6)
    # The class part: the class word's own embedding row, in every layer.
    toy = module.tokenizer("toy", add_special_tokens=False).input_ids
    row = module.concept_tokens.embedding.base.weight[toy[0]]  # type: ignore[index]
    assert all(torch.equal(vectors[layer, 1], row) for layer in range(LAYERS))
    # "<v1>" is written as the two parts' tokens.
    assert module.concept_tokens.expand(PROMPT) == "a photo of a <v1> <v1>_1 toy"


def test_refuses_another_number_of_parts() -> None:
    with pytest.raises(ValueError, match="num_vectors is 2"):
        EDLoRA(concepts=[ConceptSpec("<v1>", "toy")], num_vectors=1)


def test_adapters_on_every_attention_linear_with_their_scale() -> None:
    module, _ = build()
    unet = {n for n, m in module.unet.named_modules() if isinstance(m, LoraLayer)}
    attention = [n for n, _ in module.unet.named_modules() if n.endswith((".attn1", ".attn2"))]
    expected = {f"{a}.{p}" for a in attention for p in ("to_q", "to_k", "to_v", "to_out.0")}
    assert unet == expected
    text = {n.rsplit(".", 1)[-1] for n, m in module.text_encoder.named_modules()
            if isinstance(m, LoraLayer)}  # fmt: skip
    assert text == {"q_proj", "k_proj", "v_proj", "out_proj"}
    layer = next(m for m in module.unet.modules() if isinstance(m, LoraLayer))
    # Their LoRA adds alpha * up(down(x)) with alpha 1: peft's scale alpha / r = 1.
    assert layer.r["default"] == 4 and layer.scaling["default"] == 1.0
    assert set(module.trainable_groups()) == {"tokens", "text_encoder_lora", "lora"}


# ----- training ------------------------------------------------------------------------------
def test_only_the_vectors_and_both_loras_change(tmp_path: Path) -> None:
    module, datamodule = build()
    state = module.state_dict()
    expected = {k for k in state if k.startswith(("unet.", "text_encoder.")) and ".lora_" in k}
    expected.add(VECTORS)
    assert module.trainable_state_keys() == expected
    before = assert_only_trainable_changed(module, datamodule, tmp_path)
    after = module.concept_tokens.embedding.vectors.detach()
    for row in range(LAYERS * 2):  # every layer's both parts got gradient
        assert not torch.equal(before[VECTORS][row], after[row]), row


def test_resume_from_a_mid_epoch_checkpoint_is_exact(tmp_path: Path) -> None:
    assert_resume_is_exact(build, tmp_path)


class RecordVectors(L.Callback):
    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, *args: Any) -> None:
        self.seen.append(module.concept_tokens.embedding.vectors.detach().clone())


def test_vectors_stop_once_their_mean_norm_reaches_the_threshold(tmp_path: Path) -> None:
    module, datamodule = build(optimizer=optimizer_with_lr(5e-2))
    start = module.concept_tokens.embedding.vectors.detach().clone()
    threshold = float(start.norm(dim=-1).mean()) + 1e-3  # crossed in the first steps
    module.embedding_norm_threshold = threshold
    record = RecordVectors()
    tiny_trainer(tmp_path, max_steps=5, callbacks=[record]).fit(module, datamodule=datamodule)
    norms = [float(v.norm(dim=-1).mean()) for v in record.seen]
    first = next(i for i, n in enumerate(norms) if n >= threshold)
    assert first < 4, norms
    assert all(torch.equal(v, record.seen[first]) for v in record.seen[first:])
    assert not torch.equal(record.seen[first], start)


def test_composes_with_spl_and_dd_loss(tmp_path: Path) -> None:
    regularizers = [SemanticPreservationLoss(weight=0.1), DenoisingDecoupleLoss(weight=0.2)]
    module, datamodule = build(
        regularizers=regularizers,
        data={"captions": CaptionOptions("tiny-blip-captioner")},
    )
    trainer = tiny_trainer(tmp_path, max_steps=2, log_every_n_steps=1)
    before = module.concept_tokens.embedding.vectors.detach().clone()
    trainer.fit(module, datamodule=datamodule)
    logged = trainer.callback_metrics
    for name in ("spl", "dd", "denoise"):
        value = logged[f"train/loss/{name}"]
        assert torch.isfinite(value) and float(value) != 0.0, name
    assert not torch.equal(before, module.concept_tokens.embedding.vectors.detach())


# ----- export --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[EDLoRA, Path]:
    module = EDLoRA(concepts=[ConceptSpec("<v1>", "toy")])
    randomise(module, seed=0)
    folder = tmp_path_factory.mktemp("edlora-export")
    assert module.export(folder) == [folder / XTI_EMBEDS, folder / LORA_WEIGHTS]
    return module, folder


def _pipe(path: Path, cls: type = StableDiffusionPipeline) -> Any:
    pipe = cls.from_pretrained(path, safety_checker=None)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return pipe


def test_export_files(exported: tuple[EDLoRA, Path]) -> None:
    module, folder = exported
    saved = load_file(folder / XTI_EMBEDS)
    assert list(saved) == ["<v1>"] and saved["<v1>"].shape == (LAYERS, 2, 32)
    assert torch.equal(saved["<v1>"], module.layer_vectors(0).detach())
    keys = set(load_file(folder / LORA_WEIGHTS))
    assert {k.split(".", 1)[0] for k in keys} == {"unet", "text_encoder"}
    assert len(keys) == len([n for n, _ in module.named_parameters() if ".lora_" in n])


@pytest.mark.smoke
def test_export_generates_what_the_module_generates(
    exported: tuple[EDLoRA, Path], tiny_sd_path: Path
) -> None:
    module, folder = exported
    ours = module_sample(module)
    pipe = edlora_pipeline(str(tiny_sd_path), folder)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    loaded = pipe_sample(pipe, prompt=PROMPT)
    assert torch.allclose(ours, loaded, atol=1e-4, rtol=0), (ours - loaded).abs().max()
    # Any StableDiffusionPipeline, given the per-layer prompt embeddings.
    plain = _pipe(tiny_sd_path)
    assert load_edlora(plain, folder) == ["<v1>"]
    embeds, negative = xti_prompt_embeds(plain, [PROMPT]), xti_prompt_embeds(plain, [""])
    again = pipe_sample(plain, prompt=None, prompt_embeds=embeds, negative_prompt_embeds=negative)
    assert torch.allclose(ours, again, atol=1e-4, rtol=0), (ours - again).abs().max()


def test_the_loras_matter(exported: tuple[EDLoRA, Path], tiny_sd_path: Path) -> None:
    """The embeddings alone (XTI's loader, no LoRA) sample something else."""
    module, folder = exported
    tokens_only = xti_pipeline(str(tiny_sd_path), folder)
    tokens_only.scheduler = DDIMScheduler.from_config(tokens_only.scheduler.config)
    assert (module_sample(module) - pipe_sample(tokens_only, prompt=PROMPT)).abs().max() > 1e-2
    pipe = _pipe(tiny_sd_path)
    load_xti(pipe, folder)
    assert not any(isinstance(m, LoraLayer) for m in pipe.unet.modules())


def test_a_plain_pipeline_is_refused_with_the_loader_to_use(
    exported: tuple[EDLoRA, Path], tiny_sd_path: Path
) -> None:
    _, folder = exported
    with pytest.raises(ValueError, match="edlora_pipeline"):
        EDLoRA.load_into(_pipe(tiny_sd_path), folder)

"""The ``mlm`` regularizer: its formula, its masking, its frozen parts, its errors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from helpers import optimizer_with_lr, tiny_datamodule, tiny_trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

from components.text_masking import masked_cross_entropy
from core.concept import ConceptSpec
from losses.mlm import MaskedLanguageModelingLoss
from models import TextualInversion

RICH = [
    "a photo of a <v1> toy on a wooden table next to a red apple, at sunset",
    "a <v1> toy built from toy bricks floating in water, watercolor painting",
    "my <v1> toy",
]


def build(
    psi_dir: Path, concepts: list[ConceptSpec] | None = None, model: str = "tiny-sd", **mlm: Any
) -> Any:
    regularizer = MaskedLanguageModelingLoss(contextualizer_dir=str(psi_dir), **mlm)
    module = TextualInversion(pretrained_model_name_or_path=model,
                              concepts=concepts or [ConceptSpec("<v1>", "toy")],
                              regularizers=[regularizer])  # fmt: skip
    regularizer.prepare(module)
    return module, regularizer


def test_masked_cross_entropy_matches_the_formula_by_hand() -> None:
    """Eq. 5: mean over masked positions of -log softmax(logits)[target]; others ignored."""
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5)
    targets = torch.tensor([[0, 1, 2, 3], [4, 0, 1, 2]])
    masked = torch.tensor([[False, True, False, True], [True, False, False, False]])
    terms = []
    for b in range(2):
        for i in range(4):
            if masked[b, i]:
                row = [float(x) for x in logits[b, i]]
                log_z = math.log(sum(math.exp(x) for x in row))
                terms.append(log_z - row[int(targets[b, i])])
    expected = sum(terms) / len(terms)
    assert float(masked_cross_entropy(logits, targets, masked)) == pytest.approx(expected, 1e-6)
    # Changing an unmasked target or logit changes nothing.
    logits[0, 0] += 10.0
    targets[1, 3] = 0
    assert float(masked_cross_entropy(logits, targets, masked)) == pytest.approx(expected, 1e-6)


@pytest.fixture(scope="module")
def sdxl_psi_dir(tmp_path_factory: pytest.TempPathFactory, tiny_cache: Path) -> Path:
    """psi for tiny-sdxl's first text encoder (its CLIP ViT-L stand-in)."""
    from models.pretraining.contextualizer import ContextualizerPretraining

    folder = tmp_path_factory.mktemp("psi-sdxl")
    torch.manual_seed(0)
    ContextualizerPretraining(pretrained_model_name_or_path="tiny-sdxl").export(folder)
    return folder


@pytest.fixture(scope="module")
def flux_psi_dir(tmp_path_factory: pytest.TempPathFactory, tiny_cache: Path) -> Path:
    """psi for tiny-flux's CLIP text encoder (FLUX's CLIP ViT-L stand-in)."""
    from models.pretraining.contextualizer import ContextualizerPretraining

    folder = tmp_path_factory.mktemp("psi-flux")
    torch.manual_seed(0)
    ContextualizerPretraining(pretrained_model_name_or_path="tiny-flux").export(folder)
    return folder


PSI_FIXTURES = {"tiny-sd": "psi_dir", "tiny-sdxl": "sdxl_psi_dir", "tiny-flux": "flux_psi_dir"}


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sdxl", "tiny-flux"])
def test_loss_equals_an_independent_computation_of_the_papers_pipeline(
    model: str, request: pytest.FixtureRequest
) -> None:
    """P -> mask with [MASK] -> Gamma -> psi -> CE at masked positions, built by hand: the
    embedding matrix with the concept and [MASK] rows appended, psi run on the full padded
    sequence (attention masked after end-of-text), a loop over positions for the CE. On SDXL
    Gamma is its first encoder (CLIP ViT-L) at its last layer, the text model psi knows; on
    FLUX too (its CLIP ViT-L; T5 is not what psi reads)."""
    psi_dir = request.getfixturevalue(PSI_FIXTURES[model])
    module, mlm = build(psi_dir, model=model)
    module.eval()
    generator = torch.Generator().manual_seed(3)
    _, input_ids, masked = mlm.predictions(module, RICH, generator)
    assert masked.any()
    with torch.no_grad():
        loss = mlm.loss(module, RICH, torch.Generator().manual_seed(3))
        tokenizer = module.tokenizer
        ids = tokenizer(RICH, padding="max_length", return_tensors="pt").input_ids
        width = input_ids.shape[1]
        full_mask = torch.zeros_like(ids, dtype=torch.bool)
        full_mask[:, :width] = masked
        mask_id = len(tokenizer)
        lookup = module.text_encoder.get_input_embeddings()
        rows = torch.cat([lookup.weight, lookup.vectors, mlm.mask_vector])
        module.text_encoder.set_input_embeddings(nn.Embedding.from_pretrained(rows))
        try:
            states = module.text_encoder(ids.masked_fill(full_mask, mask_id)).last_hidden_state
        finally:
            module.text_encoder.set_input_embeddings(lookup)
        eos_at = [row.tolist().index(tokenizer.eos_token_id) for row in ids]
        padding = torch.tensor([[j > e for j in range(ids.shape[1])] for e in eos_at])
        logits = mlm.contextualizer(states, padding_mask=padding)
        terms = [
            float(-F.log_softmax(logits[b, i], dim=-1)[ids[b, i]])
            for b in range(len(RICH))
            for i in range(ids.shape[1])
            if full_mask[b, i]
        ]
    assert float(loss) == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_masking_never_hits_concept_or_class_word_and_takes_about_15_percent(
    psi_dir: Path,
) -> None:
    concepts = [ConceptSpec("<v1>", "teddy bear", initializer_word="toy")]
    module, mlm = build(psi_dir, concepts)
    prompts = [
        "a photo of a <v1> teddy bear next to a teddy bear on the beach, at sunset",
        "a <v1> teddy bear wearing a red scarf in the snow, oil painting",
    ]
    ids = module.tokenize(prompts)
    tokens = [module.tokenizer.convert_ids_to_tokens(row) for row in ids]
    # Independently: the positions of <v1>, of "teddy" + "bear" pieces, and of specials.
    teddy = module.tokenizer.tokenize("teddy bear")
    never = torch.zeros_like(ids, dtype=torch.bool)
    for b, row in enumerate(tokens):
        end = row.index("<|endoftext|>")
        for i, token in enumerate(row):
            if i == 0 or i >= end or token == "<v1>":
                never[b, i] = True
            if row[i : i + len(teddy)] == teddy:
                never[b, i : i + len(teddy)] = True
    assert never[0].sum() > 10
    generator = torch.Generator().manual_seed(0)
    hits = torch.zeros_like(ids, dtype=torch.long)
    draws = 2000
    for _ in range(draws):
        hits += mlm.mask_positions(module, ids, generator).long()
    assert hits[never].sum() == 0
    rate = hits[~never].float() / draws
    assert (rate > 0.11).all() and (rate < 0.19).all()  # each position ~15% (sd ~0.8%)
    assert float(rate.mean()) == pytest.approx(0.15, abs=0.005)


def test_nothing_masked_adds_exactly_zero_and_no_nan(psi_dir: Path) -> None:
    module, mlm = build(psi_dir, mask_probability=0.0)
    assert float(mlm.loss(module, RICH, torch.Generator().manual_seed(0))) == 0.0
    _, everything = build(psi_dir, mask_probability=1.0)
    only_protected = ["<v1> toy", "toy <v1> toy"]
    value = everything.loss(module, only_protected)
    assert float(value) == 0.0 and not torch.isnan(value)
    # In a training step: the total is the denoising loss alone, and it backpropagates.
    datamodule = tiny_datamodule()
    datamodule.request({"context_prompts"}, "test")
    batch = next(iter(datamodule.train_dataloader()))
    losses = module.compute_losses(batch, module.sample_draws(batch, 0))
    assert float(losses["parts"]["mlm"]) == 0.0
    assert torch.equal(losses["total"], losses["parts"]["denoise"])
    losses["total"].backward()
    assert torch.isfinite(module.concept_tokens.embedding.vectors.grad).all()


def test_mlm_gradient_reaches_the_concept_token_only(psi_dir: Path) -> None:
    module, mlm = build(psi_dir)
    loss = mlm.loss(module, RICH, torch.Generator().manual_seed(1))
    loss.backward()
    assert module.concept_tokens.embedding.vectors.grad.abs().sum() > 0
    assert all(p.grad is None for p in mlm.contextualizer.parameters())
    assert not mlm.mask_vector.requires_grad


class PsiModeProbe(Callback):
    """Records whether psi is in training mode during training steps."""

    def __init__(self) -> None:
        self.modes: list[bool] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        self.modes.append(pl_module.regularizers[0].contextualizer.training)


def test_training_never_updates_psi_or_mask_and_keeps_them_out_of_optimizer_and_checkpoint(
    psi_dir: Path, tmp_path: Path
) -> None:
    datamodule = tiny_datamodule()
    mlm = MaskedLanguageModelingLoss(weight=1.0, contextualizer_dir=str(psi_dir))
    module = TextualInversion(
        concepts=datamodule.concepts, regularizers=[mlm], optimizer=optimizer_with_lr(1e-2)
    )
    mlm.prepare(module)
    psi_before = {k: v.clone() for k, v in mlm.contextualizer.state_dict().items()}
    mask_before = mlm.mask_vector.clone()
    tokens_before = module.concept_tokens.embedding.vectors.detach().clone()
    probe = PsiModeProbe()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3)
    trainer = tiny_trainer(tmp_path, max_steps=3, callbacks=[probe, checkpoint])
    trainer.fit(module, datamodule=datamodule)
    assert "train/loss/mlm" in trainer.callback_metrics
    assert probe.modes == [False, False, False]  # no dropout in the frozen scorer
    module.train()  # whatever asks for train mode, psi stays a fixed scorer
    assert not mlm.contextualizer.training
    for name, tensor in mlm.contextualizer.state_dict().items():
        assert torch.equal(tensor, psi_before[name]), name
    assert torch.equal(mlm.mask_vector, mask_before)
    assert not torch.equal(module.concept_tokens.embedding.vectors, tokens_before)
    optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not optimized & {id(p) for p in mlm.parameters()}
    assert id(mlm.mask_vector) not in optimized
    saved = torch.load(next((tmp_path / "ckpt").glob("*.ckpt")), weights_only=True)
    assert not any("regularizers" in k or "mask_vector" in k for k in saved["state_dict"])


def test_missing_contextualizer_names_the_command_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    datamodule = tiny_datamodule()
    module = TextualInversion(
        concepts=datamodule.concepts, regularizers=[MaskedLanguageModelingLoss()]
    )
    before = module.concept_tokens.embedding.vectors.detach().clone()
    monkeypatch.setenv("PERSONALIZE_CACHE", str(tmp_path / "empty"))  # after the model loaded
    command = (
        "python train.py fit --config configs/diverse_context/contextualizer.yaml "
        "--config configs/tiny.yaml"
    )
    with pytest.raises(FileNotFoundError, match=f"run `{command}` first"):
        tiny_trainer(tmp_path, max_steps=2).fit(module, datamodule=datamodule)
    assert torch.equal(module.concept_tokens.embedding.vectors, before)
    explicit = MaskedLanguageModelingLoss(contextualizer_dir=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="point contextualizer_dir at"):
        explicit.prepare(module)


def test_caption_batch_is_its_own_draw_of_the_pools(
    psi_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mlm_batch_size captions per step from the DataModule's pools, the same for any image
    batch at that step, another at the next step; all masked rows go into one request."""
    module, mlm = build(psi_dir, mlm_batch_size=25)
    datamodule = tiny_datamodule()
    datamodule.request({"context_prompts"}, "test")
    mlm.prefill(module, datamodule)
    pool = set(datamodule.prompt_pools("context_prompts")[0])
    assert len(pool) > 1000
    loader = iter(datamodule.train_dataloader())
    first, second = next(loader), next(loader)
    captions = mlm.caption_batch(first, module)
    assert len(captions) == 25 and set(captions) <= pool
    assert len(set(captions)) > 20  # distinct draws from a pool of thousands
    assert mlm.caption_batch(second, module) == captions  # independent of the image batch
    requests = mlm.text_requests(first, module)
    assert len(requests) == 1 and requests[0].input_ids.shape[0] == 25
    monkeypatch.setattr(type(module), "global_step", property(lambda self: 1))
    assert mlm.caption_batch(first, module) != captions


def test_caption_batch_masks_tokens_at_every_step(psi_dir: Path) -> None:
    """At the authors' 25 captions no step masks nothing (one rich prompt per image sample at
    batch 1 did at about 15% of steps)."""
    module, mlm = build(psi_dir, mlm_batch_size=25)
    datamodule = tiny_datamodule()
    datamodule.request({"context_prompts"}, "test")
    mlm.prefill(module, datamodule)
    batch = next(iter(datamodule.train_dataloader()))
    generator = torch.Generator().manual_seed(0)
    counts = []
    for _ in range(20):
        request = mlm.masked_request(module, mlm.caption_batch(batch, module), generator)
        assert request is not None
        counts.append(int(request.note[1].sum()))
    assert min(counts) > 10


def test_null_mlm_batch_size_uses_the_image_batch_prompts(psi_dir: Path) -> None:
    module, mlm = build(psi_dir, mlm_batch_size=None)
    datamodule = tiny_datamodule()
    datamodule.request({"context_prompts"}, "test")
    mlm.prefill(module, datamodule)
    batch = next(iter(datamodule.train_dataloader()))
    assert mlm.caption_batch(batch, module) == list(batch["context_prompts"])


def test_caption_batch_needs_a_datamodule_with_pools(psi_dir: Path) -> None:
    module, mlm = build(psi_dir)
    with pytest.raises(ValueError, match="mlm_batch_size: null"):
        mlm.prefill(module, object())
    with pytest.raises(ValueError, match=">= 1"):
        MaskedLanguageModelingLoss(mlm_batch_size=0)

"""The regularizer interface: weighting, logging, and data requested from the DataModule."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from helpers import tiny_datamodule, tiny_trainer

from datamodules.extras import SampleExtra, extra_for
from losses.base import Regularizer
from models import TextualInversion
from step.record import StepRecord


class ConceptIndexSquared(SampleExtra):
    """A test extra: one number per sample, derived from the concept index and the rng."""

    provides: ClassVar[frozenset[str]] = frozenset({"test_number"})

    def add(self, sample: dict[str, Any], concept_index: int, rng: random.Random) -> None:
        sample["test_number"] = float(concept_index**2 + rng.random())


class NeedsOption(SampleExtra):
    provides: ClassVar[frozenset[str]] = frozenset({"test_needs_option"})

    @classmethod
    def from_datamodule(cls, datamodule: Any) -> SampleExtra:
        raise ValueError("set data.init_args.some_option")


class MeanOfNumbers(Regularizer):
    """Returns mean(test_number) * mean(model_pred): a value we can recompute by hand."""

    name = "numbers"
    requires = frozenset({"test_number"})
    seen: ClassVar[list[tuple[torch.Tensor, torch.Tensor]]] = []

    def forward(self, record: StepRecord, module: Any) -> torch.Tensor:
        numbers = record.batch["test_number"].float()
        MeanOfNumbers.seen.append((numbers.clone(), record.model_pred.detach().mean()))
        return numbers.mean() * record.model_pred.mean()


class NeedsUnknown(Regularizer):
    name = "unknown"
    requires = frozenset({"no_such_key"})


class NeedsMissingOption(Regularizer):
    name = "missing_option"
    requires = frozenset({"test_needs_option"})


def test_extras_register_by_definition() -> None:
    assert extra_for("test_number") is ConceptIndexSquared
    assert extra_for("no_such_key") is None


def test_requested_extra_reaches_the_batch_and_leaves_base_sample_unchanged() -> None:
    plain = tiny_datamodule()
    extended = tiny_datamodule()
    extended.request({"test_number"}, "test")
    assert "test_number" in extended.provided_batch_keys()
    a = plain.train_dataloader().dataset[7]
    b = extended.train_dataloader().dataset[7]
    assert set(b) - set(a) == {"test_number"}
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and a["prompts"] == b["prompts"]
    # Requesting again builds nothing twice.
    extended.request({"test_number"}, "test")
    assert len(extended.extras) == 1


def test_weighted_regularizer_is_added_and_logged(tmp_path: Path) -> None:
    datamodule = tiny_datamodule()
    regularizer = MeanOfNumbers(weight=0.25)
    module = TextualInversion(concepts=datamodule.concepts, regularizers=[regularizer])
    MeanOfNumbers.seen.clear()
    trainer = tiny_trainer(tmp_path, max_steps=2)
    trainer.fit(module, datamodule=datamodule)
    assert len(MeanOfNumbers.seen) == 2
    metrics = trainer.callback_metrics
    numbers, pred_mean = MeanOfNumbers.seen[-1]
    assert metrics["train/loss/numbers"] == pytest.approx(float(numbers.mean() * pred_mean))
    total = metrics["train/loss/denoise"] + 0.25 * metrics["train/loss/numbers"]
    assert metrics["train/loss"] == pytest.approx(float(total), rel=1e-5)


@pytest.mark.parametrize(
    ("regularizer", "message"),
    [
        (NeedsUnknown(), "Regularizer 'unknown' needs batch data 'no_such_key'.*cannot build"),
        (NeedsMissingOption(), "'missing_option' needs .*set data.init_args.some_option"),
    ],
)
def test_missing_data_is_a_clear_error_before_training(
    regularizer: Regularizer, message: str, tmp_path: Path
) -> None:
    datamodule = tiny_datamodule()
    module = TextualInversion(concepts=datamodule.concepts, regularizers=[regularizer])
    before = module.concept_tokens.embedding.vectors.detach().clone()
    with pytest.raises(ValueError, match=message):
        tiny_trainer(tmp_path, max_steps=2).fit(module, datamodule=datamodule)
    assert torch.equal(module.concept_tokens.embedding.vectors, before)  # no step was taken


def view_members() -> set[str]:
    """Every member the regularizers' view declares (its own and its base protocol's)."""
    from losses.model_view import ModelView

    names: set[str] = set()
    for cls in ModelView.__mro__:
        if cls.__module__ in {"losses.model_view", "step.requests"}:
            names |= set(getattr(cls, "__annotations__", {}))
            names |= {n for n in vars(cls) if not n.startswith("_")}
    return names


def test_the_module_offers_everything_the_view_declares() -> None:
    # Losses are typed against the view, not the base class: each declared member must exist
    # on a real module, with the view's type where one can be read.
    module = TextualInversion(concepts=tiny_datamodule().concepts)
    members = view_members()
    assert {"tokenizer", "predict_noise", "encode_token_ids", "family", "all_gather"} <= members
    missing = sorted(name for name in members if not hasattr(module, name))
    assert missing == []
    assert isinstance(module.device, torch.device)
    assert isinstance(module.concepts, list)
    assert isinstance(module.pretrained_model_name_or_path, str)
    assert type(module.family).__module__.startswith("backbones.")

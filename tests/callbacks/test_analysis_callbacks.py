"""The analysis callbacks in training: schedule, rank zero only, off the graph, every baseline."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from helpers import optimizer_with_lr, tiny_datamodule, tiny_trainer, trainable_state
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from callbacks import AttentionMaps, SemanticDrift, TextSemantics
from callbacks.analysis import AnalysisCallback, off_graph
from models import XTI, CustomDiffusion, LoRA, TextualInversion
from models.base import PersonalizationModule


class Counting(AnalysisCallback):
    """Records the steps it measured at and whether it ran off the graph."""

    def __init__(self, every_n_steps: int) -> None:
        super().__init__(every_n_steps)
        self.seen: list[tuple[int, bool, bool]] = []

    def measure(self, trainer: Any, module: PersonalizationModule, step: int) -> dict[str, float]:
        self.seen.append((step, torch.is_grad_enabled(), module.training))
        return {"count/step": float(step)}


def analysis_callbacks(every: int = 1) -> list[AnalysisCallback]:
    return [
        SemanticDrift(every_n_steps=every, perplexity=10),
        AttentionMaps(every_n_steps=every, num_inference_steps=2),
        TextSemantics(every_n_steps=every),
    ]


def test_off_graph_restores_every_flag_and_the_rng() -> None:
    module = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5), nn.Sequential(nn.Linear(2, 2)))
    module.train()
    module[2].eval()  # mixed modes must come back exactly, not as a blanket train()
    before = [m.training for m in module.modules()]
    state = torch.random.get_rng_state()
    with off_graph(module):
        assert not any(m.training for m in module.modules())
        assert not torch.is_grad_enabled()
        torch.randn(10)
    assert [m.training for m in module.modules()] == before
    assert torch.is_grad_enabled()
    assert torch.equal(torch.random.get_rng_state(), state)


def test_other_ranks_do_nothing() -> None:
    callback = Counting(every_n_steps=1)
    module = TextualInversion.__new__(TextualInversion)  # never touched on other ranks
    callback._run(SimpleNamespace(is_global_zero=False, global_step=0), module)
    assert callback.seen == [] and callback.history == []


def test_schedule_step_zero_every_n_and_the_end(tmp_path: Path, tiny_sd_path: Path) -> None:
    datamodule = tiny_datamodule()
    module = TextualInversion(concepts=datamodule.concepts, optimizer=optimizer_with_lr(1e-2))
    counting = Counting(every_n_steps=2)
    tiny_trainer(tmp_path, max_steps=5, callbacks=[counting]).fit(module, datamodule=datamodule)
    assert [s for s, _, _ in counting.seen] == [0, 2, 4, 5]
    assert not any(grad or training for _, grad, training in counting.seen)


def test_training_is_bitwise_the_same_with_the_callbacks(tmp_path: Path) -> None:
    results = []
    for callbacks in ([], analysis_callbacks()):
        datamodule = tiny_datamodule()
        module = CustomDiffusion(concepts=datamodule.concepts, optimizer=optimizer_with_lr(1e-2))
        trainer = tiny_trainer(tmp_path / str(len(callbacks)), max_steps=2, callbacks=callbacks)
        trainer.fit(module, datamodule=datamodule)
        results.append(trainable_state(module))
    assert results[0].keys() == results[1].keys()
    for key in results[0]:
        assert torch.equal(results[0][key], results[1][key]), key


BASELINES: dict[str, type[PersonalizationModule]] = {
    "textual_inversion": TextualInversion,
    "custom_diffusion": CustomDiffusion,
    "lora": LoRA,
    "xti": XTI,
}


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_every_baseline_logs_all_analysis_tags(name: str, tmp_path: Path) -> None:
    datamodule = tiny_datamodule()
    module = BASELINES[name](concepts=datamodule.concepts, optimizer=optimizer_with_lr(5e-2))
    logger = TensorBoardLogger(str(tmp_path), name="run")
    callbacks = analysis_callbacks()
    trainer: L.Trainer = tiny_trainer(
        tmp_path, max_steps=1, callbacks=callbacks, logger=logger, log_every_n_steps=1
    )
    trainer.fit(module, datamodule=datamodule)
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    scalars = {"drift/rank", "drift/cosine", "attn/class_activation", "attn/skl"}
    scalars |= {"text/sim1", "text/sim2"}
    assert scalars <= set(events.Tags()["scalars"])
    images = {"drift/tsne", "attn/<v1>", "attn/toy", "attn/beach", "attn/jungle", "attn/grid"}
    assert images <= set(events.Tags()["images"])
    assert [e.step for e in events.Scalars("drift/cosine")] == [0, 1]
    # Training moved the concept's text features (the tokens or the adapters trained).
    drift = callbacks[0].history
    if name != "lora":  # LoRA's tokens and text encoder stay frozen by default
        assert drift[0][1]["drift/cosine"] != drift[1][1]["drift/cosine"]


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_noisy_latent_attention_maps_run_with_every_baseline(name: str, tmp_path: Path) -> None:
    datamodule = tiny_datamodule()
    module = BASELINES[name](concepts=datamodule.concepts, optimizer=optimizer_with_lr(5e-2))
    callback = AttentionMaps(every_n_steps=1, source="noisy_latent")
    tiny_trainer(tmp_path, max_steps=1, callbacks=[callback]).fit(module, datamodule=datamodule)
    assert [step for step, _ in callback.history] == [0, 1]
    for _, metrics in callback.history:
        assert set(metrics) == {"attn/class_activation", "attn/skl"}
        assert all(math.isfinite(value) for value in metrics.values())
    assert callback._image_label == "instance"  # the heat maps lie over the first photo
    assert {"attn/<v1>", "attn/toy", "attn/beach", "attn/jungle"} <= set(callback.last_images)

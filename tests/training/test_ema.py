"""``ema``: the average of the trained weights equals one computed by hand with diffusers'
decay schedule, covers exactly what trains, is what sampling and the export use, and resumes
exactly from a checkpoint (which a run without EMA cannot resume into)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from helpers import optimizer_with_lr, tiny_datamodule, tiny_trainer
from safetensors.torch import load_file

from models import LoRA, TextualInversion
from models.exports_loading import export_with_manifest
from models.lora_adapters import LORA_WEIGHTS
from training.ema import EMASettings, trained_parameters

DECAY = 0.8


class Snapshots(L.Callback):
    """The trained weights after each optimizer step."""

    def __init__(self) -> None:
        self.seen: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, *args: Any) -> None:
        self.seen.append({n: p.detach().clone() for n, p in trained_parameters(module).items()})


def by_hand(snapshots: list[dict[str, torch.Tensor]], decay: float) -> dict[str, torch.Tensor]:
    """diffusers' schedule without warm-up: the k-th update (k = 1, 2, ...) uses
    d_k = min(decay, (1 + s) / (10 + s)) with s = k - 1, and d_1 = 0."""
    average = {n: t.double() for n, t in snapshots[0].items()}
    for k, weights in enumerate(snapshots[1:], start=2):
        s = k - 1
        d = min(decay, (1 + s) / (10 + s))
        average = {n: d * average[n] + (1 - d) * weights[n].double() for n in average}
    return average


def lora_with_ema(**overrides: Any) -> tuple[LoRA, Any]:
    datamodule = tiny_datamodule()
    module = LoRA(
        concepts=datamodule.concepts, optimizer=optimizer_with_lr(5e-2), train_tokens=True,
        ema=EMASettings(decay=DECAY), **overrides,
    )  # fmt: skip
    return module, datamodule


@pytest.mark.smoke  # the newest allowed versions too
def test_the_average_is_diffusers_schedule_over_the_trained_weights_only(tmp_path: Path) -> None:
    module, datamodule = lora_with_ema()
    snapshots = Snapshots()
    trainer = tiny_trainer(tmp_path, max_steps=5, callbacks=[snapshots])
    trainer.fit(module, datamodule=datamodule)
    average = module.weights_average()
    assert average is not None and average.average.optimization_step == 5
    trained = trained_parameters(module)
    assert average.names == sorted(trained)  # the LoRA adapters and the token vectors only
    assert any(".lora_A." in n for n in trained) and any("vectors" in n for n in trained)
    assert all(".lora_" in n or n.endswith("embedding.vectors") for n in trained)
    expected = by_hand(snapshots.seen, DECAY)
    now = {n: p.detach().clone() for n, p in trained.items()}
    with module.averaged_weights():
        for name, param in trained_parameters(module).items():
            assert torch.allclose(param.double(), expected[name], atol=1e-6), name
    assert any(not torch.equal(now[n], expected[n].float()) for n in now)  # it averages
    for name, param in trained_parameters(module).items():  # and puts the weights back
        assert torch.equal(param, now[name]), name


def test_sampling_and_the_export_use_the_average(tmp_path: Path) -> None:
    module, datamodule = lora_with_ema()
    tiny_trainer(tmp_path / "run", max_steps=4).fit(module, datamodule=datamodule)
    trained = trained_parameters(module)
    with module.averaged_weights():
        averaged = {n: p.detach().clone() for n, p in trained.items()}
    sampled = module.generate(["a photo of <v1> toy"], num_inference_steps=2)
    export_with_manifest(module, tmp_path / "export")
    lora_file = load_file(str(tmp_path / "export" / LORA_WEIGHTS))

    plain, _ = lora_with_ema()
    plain.ema = None  # the same module holding the averaged weights as its own
    with torch.no_grad():
        for name, param in trained_parameters(plain).items():
            param.copy_(averaged[name])
    assert torch.equal(sampled, plain.generate(["a photo of <v1> toy"], num_inference_steps=2))
    export_with_manifest(plain, tmp_path / "plain")
    plain_file = load_file(str(tmp_path / "plain" / LORA_WEIGHTS))
    assert lora_file.keys() == plain_file.keys()
    assert all(torch.equal(lora_file[k], plain_file[k]) for k in lora_file)


def test_a_resumed_run_continues_the_same_average(tmp_path: Path) -> None:
    straight, datamodule = lora_with_ema()
    tiny_trainer(tmp_path / "a", max_steps=6).fit(straight, datamodule=datamodule)
    first, datamodule = lora_with_ema()
    tiny_trainer(tmp_path / "b", max_steps=3, checkpoint=True).fit(first, datamodule=datamodule)
    checkpoint = tmp_path / "b" / "ckpt" / "epoch=0-step=3.ckpt"
    stored = torch.load(checkpoint, weights_only=True)  # the EMA state loads weights-only
    assert stored["ema"]["optimization_step"] == 3
    resumed, datamodule = lora_with_ema()
    trainer = tiny_trainer(tmp_path / "c", max_steps=6)
    trainer.fit(resumed, datamodule=datamodule, ckpt_path=checkpoint)
    ours, theirs = straight.weights_average().average, resumed.weights_average().average
    assert ours.optimization_step == theirs.optimization_step == 6
    assert all(torch.equal(a, b) for a, b in zip(ours.shadow_params, theirs.shadow_params))


def test_resuming_a_run_without_ema_into_one_with_it_is_refused(tmp_path: Path) -> None:
    datamodule = tiny_datamodule()
    plain = TextualInversion(concepts=datamodule.concepts, optimizer=optimizer_with_lr(1e-2))
    tiny_trainer(tmp_path / "a", max_steps=3, checkpoint=True).fit(plain, datamodule=datamodule)
    checkpoint = tmp_path / "a" / "ckpt" / "epoch=0-step=3.ckpt"
    averaged = TextualInversion(
        concepts=datamodule.concepts, optimizer=optimizer_with_lr(1e-2), ema=EMASettings()
    )
    with pytest.raises(ValueError, match="holds no EMA of the weights"):
        tiny_trainer(tmp_path / "b", max_steps=4).fit(
            averaged, datamodule=datamodule, ckpt_path=checkpoint
        )


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_a_decay_outside_zero_to_one_is_refused(decay: float) -> None:
    with pytest.raises(ValueError, match="ema.decay must be in"):
        EMASettings(decay=decay)

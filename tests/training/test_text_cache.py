"""``memory.cache_text``: with nothing in the text path training, each distinct prompt goes
through the text encoders once and training is exactly what it is without the cache; a run
whose tokens or text-encoder LoRA train is refused with one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import optimizer_with_lr, tiny_datamodule, tiny_trainer, trainable_state

from models import LoRA
from training.memory import MemorySettings


def build(cache_text: bool, **options: object) -> tuple[LoRA, object]:
    datamodule = tiny_datamodule(repeats=1)
    module = LoRA(
        pretrained_model_name_or_path="tiny-flux", concepts=datamodule.concepts,
        optimizer=optimizer_with_lr(1e-2), memory=MemorySettings(cache_text=cache_text),
        **options,
    )  # fmt: skip
    return module, datamodule


def test_each_prompt_is_encoded_once_and_training_is_unchanged(
    tiny_flux_path: Path, tmp_path: Path
) -> None:
    plain, datamodule = build(False)
    tiny_trainer(tmp_path / "a", max_steps=4).fit(plain, datamodule=datamodule)
    cached, datamodule = build(True)
    rows: list[tuple[int, ...]] = []
    cached.text_encoder_2.register_forward_hook(
        lambda m, args, out: rows.extend(tuple(r) for r in args[0].tolist())
    )
    tiny_trainer(tmp_path / "b", max_steps=4).fit(cached, datamodule=datamodule)
    assert len(rows) == len(set(rows))  # T5 saw each distinct prompt once
    assert len(rows) < 4 * 2  # of the 8 prompts the 4 steps of batch 2 read
    expected, actual = trainable_state(plain), trainable_state(cached)
    assert expected.keys() == actual.keys() and expected
    for name, value in expected.items():
        assert torch.equal(value, actual[name]), name


@pytest.mark.parametrize("options", [{"train_tokens": True}, {"train_text_encoder": True}])
def test_a_training_text_path_is_refused(tiny_flux_path: Path, options: dict) -> None:
    module, _ = build(True, **options)
    with pytest.raises(ValueError, match="memory.cache_text keeps each prompt's text encoding"):
        module.apply_memory_settings()

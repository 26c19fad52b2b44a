"""A non-finite loss part or trained weight stops the run, naming the step and the part, and
leaves only finite checkpoints and exports on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import optimizer_with_lr, tiny_datamodule, tiny_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors.torch import load_file

from callbacks.export import ExportWeights
from losses.spl import SemanticPreservationLoss
from models import TextualInversion
from training.finite_guard import NonFiniteError, check_loss_parts, check_trained_finite


def test_the_first_non_finite_part_is_named_with_its_step() -> None:
    parts = {"denoise": torch.tensor(0.5), "spl": torch.tensor(2.0)}
    check_loss_parts(parts, {"spl": 1.0}, step=3)  # finite: nothing happens
    with pytest.raises(NonFiniteError, match=r"step 3: loss part 'spl' \(x weight 1e\+39\)"):
        check_loss_parts(parts, {"spl": 1e39}, step=3)
    with pytest.raises(NonFiniteError, match="'denoise'.* is nan"):
        check_loss_parts({"denoise": torch.tensor(float("nan"))}, {}, step=0)
    weight = torch.nn.Parameter(torch.tensor([1.0, float("inf")]))
    with pytest.raises(NonFiniteError, match="step 7: .*'w' infinite"):
        check_trained_finite([("w", weight)], step=7)


def test_huge_finite_weights_pass_and_the_nan_among_many_is_named() -> None:
    # Their norm overflows to inf, which alone must not stop a run: each is finite.
    huge = torch.nn.Parameter(torch.full((4,), 3e38))
    check_trained_finite([("huge", huge)], step=1)
    fine = [(f"ok{i}", torch.nn.Parameter(torch.randn(3))) for i in range(5)]
    bad = torch.nn.Parameter(torch.tensor([0.0, float("nan")]))
    with pytest.raises(NonFiniteError, match="'bad' nan"):
        check_trained_finite([*fine, ("bad", bad), ("huge", huge)], step=2)


def run(tmp_path: Path, **module_args: object) -> tuple[TextualInversion, Path]:
    datamodule = tiny_datamodule()
    module = TextualInversion(concepts=datamodule.concepts, **module_args)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True)
    trainer = tiny_trainer(
        tmp_path, max_steps=6, callbacks=[checkpoints, ExportWeights()], logger=False
    )
    with pytest.raises(NonFiniteError) as error:
        trainer.fit(module, datamodule=datamodule)
    return module, Path(str(error.value))


def written_tensors(root: Path) -> list[torch.Tensor]:
    tensors = []
    for checkpoint in (root / "ckpt").glob("*.ckpt"):
        tensors += list(torch.load(checkpoint, weights_only=True)["state_dict"].values())
    for export in root.rglob("*.safetensors"):
        tensors += list(load_file(str(export)).values())
    return tensors


def test_a_huge_learning_rate_stops_the_run_with_only_finite_files(tmp_path: Path) -> None:
    _, message = run(tmp_path, optimizer=optimizer_with_lr(1e10))
    assert str(message).startswith("step ")
    assert list(tmp_path.rglob("*.ckpt"))  # earlier steps were saved, and stay
    tensors = written_tensors(tmp_path)
    assert tensors and all(bool(torch.isfinite(t).all()) for t in tensors)


def test_a_huge_regularizer_weight_stops_at_the_first_step(tmp_path: Path) -> None:
    _, message = run(tmp_path, regularizers=[SemanticPreservationLoss(weight=1e39)])
    assert str(message).startswith("step 0: loss part 'spl'")
    assert not list(tmp_path.rglob("*.ckpt"))
    assert not list(tmp_path.rglob("*.safetensors"))

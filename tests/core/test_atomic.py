"""A failure in the middle of a write leaves the previous checkpoint and export intact, and a
step export appears only once its checkpoint is on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import optimizer_with_lr, tiny_datamodule, tiny_trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from callbacks.export import ExportWeights
from core.atomic import write_file_atomically
from models import TextualInversion
from training.safe_checkpoints import AtomicCheckpointIO


class DiskFull(OSError):
    pass


def test_a_failed_file_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"previous")

    def half_then_fail(handle) -> None:
        handle.write(b"half a new che")
        raise DiskFull("No space left on device")

    with pytest.raises(DiskFull):
        write_file_atomically(target, half_then_fail)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no partial left behind


def fit(root: Path, steps: int) -> None:
    datamodule = tiny_datamodule()
    module = TextualInversion(concepts=datamodule.concepts, optimizer=optimizer_with_lr(1e-2))
    checkpoints = ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=2, save_last=True)
    trainer = tiny_trainer(
        root, max_steps=steps, callbacks=[checkpoints, ExportWeights()],
        plugins=[AtomicCheckpointIO()],
    )  # fmt: skip
    trainer.fit(module, datamodule=datamodule)


def test_a_checkpoint_failing_midway_keeps_the_last_good_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fit(tmp_path, steps=2)
    last = tmp_path / "ckpt" / "last.ckpt"
    exports = tmp_path / "export"
    assert (exports / "step-2").is_dir()
    real_save = torch.save

    def fail_at_step_4(obj, handle, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("global_step") == 4:
            handle.write(b"truncated")
            raise DiskFull("No space left on device")
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fail_at_step_4)
    with pytest.raises(DiskFull):
        fit(tmp_path, steps=6)
    loaded = torch.load(last, weights_only=True)
    assert loaded["global_step"] == 2
    assert (exports / "step-2").is_dir()
    assert not (exports / "step-4").exists()  # its checkpoint never made it to disk
    assert not [p for p in tmp_path.rglob("*partial*")] + [p for p in exports.glob(".*")]


def test_a_second_run_into_the_same_folder_replaces_the_final_export(tmp_path: Path) -> None:
    # Runs without a logger share default_root_dir/export; its a1111/ folder is replaced whole.
    fit(tmp_path, steps=2)
    first = (tmp_path / "export" / "a1111" / "v1.safetensors").read_bytes()
    fit(tmp_path, steps=4)
    second = (tmp_path / "export" / "a1111" / "v1.safetensors").read_bytes()
    assert first != second
    assert not (tmp_path / "export" / ".final.partial").exists()


def test_the_export_of_the_last_checkpoint_is_placed_too(tmp_path: Path) -> None:
    # last.ckpt is written after training ends (no step checkpoint due): its export lands.
    datamodule = tiny_datamodule()
    module = TextualInversion(concepts=datamodule.concepts, optimizer=optimizer_with_lr(1e-2))
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=100,
                                  save_last=True)  # fmt: skip
    trainer = tiny_trainer(tmp_path, max_steps=3, callbacks=[checkpoints, ExportWeights()])
    trainer.fit(module, datamodule=datamodule)
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
    assert (tmp_path / "export" / "step-3" / "learned_embeds.safetensors").is_file()
    assert not [p.name for p in (tmp_path / "export").iterdir() if p.name.startswith(".")]

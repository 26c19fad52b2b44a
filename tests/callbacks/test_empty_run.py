"""Which run folders count as empty (only what start-up writes) and may be removed."""

from __future__ import annotations

from pathlib import Path

from callbacks.empty_run import only_start_up_files


def test_start_up_files_alone_make_an_empty_run(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("x")
    (tmp_path / "hparams.yaml").write_text("x")
    (tmp_path / "events.out.tfevents.1.host").write_bytes(b"x")
    assert only_start_up_files(tmp_path)


def test_anything_else_keeps_the_folder(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("x")
    (tmp_path / "checkpoints").mkdir()
    assert not only_start_up_files(tmp_path)
    (tmp_path / "checkpoints").rmdir()
    (tmp_path / "notes.txt").write_text("mine")
    assert not only_start_up_files(tmp_path)

"""``test`` / ``predict`` of a run's checkpoint score that run's concept and write into it."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import REPO_ROOT
from PIL import Image

from core.run_config import option_value, run_folder_of, with_run_config
from train import main

CUSTOM_DIFFUSION = str(REPO_ROOT / "configs" / "custom_diffusion.yaml")
TINY = str(REPO_ROOT / "configs" / "tiny.yaml")
NO_CALLBACKS = "--trainer.callbacks=[]"
QUICK_EVAL = ["--data.init_args.eval_prompts.max_prompts", "1"]


@pytest.fixture(scope="module")
def dog_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(photos, run folder, last.ckpt) of a 1-step run on 'dog' photos with the overlay."""
    root = tmp_path_factory.mktemp("dog-run")
    photos = root / "photos"
    photos.mkdir()
    for i in range(3):
        Image.new("RGB", (48, 48), (70 * i, 120, 40)).save(photos / f"{i:02d}.png")
    checkpoints = (
        "[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: {save_last: true}}]"
    )
    cli = main([
        "fit", "--config", CUSTOM_DIFFUSION, "--config", TINY,
        "--data.init_args.instance_data_dir", str(photos), "--data.init_args.class_word", "dog",
        "--trainer.max_steps", "1", "--trainer.default_root_dir", str(root / "runs"),
        "--trainer.callbacks", checkpoints,
    ])  # fmt: skip
    run = Path(cli.trainer.log_dir)
    return photos, run, run / "checkpoints" / "last.ckpt"


def test_the_overlay_and_the_recipe_do_not_replace_the_trained_concept(
    dog_run: tuple[Path, Path, Path],
) -> None:
    photos, run, checkpoint = dog_run
    args = ["test", "--config", CUSTOM_DIFFUSION, "--config", TINY, "--ckpt_path", str(checkpoint)]
    training_config = (run / "config.yaml").read_bytes()
    cli = main([*args, NO_CALLBACKS, *QUICK_EVAL])
    assert (run / "config.yaml").read_bytes() == training_config  # the run's record stays
    concept = cli.datamodule.concept_data[0]
    assert (concept.class_word, concept.instance_data_dir) == ("dog", str(photos))
    assert cli.datamodule.eval_prompt_set == "dreambench_live"  # a dog: the live-subject set
    assert Path(cli.trainer.log_dir) == run  # into the run, not a new version
    assert (run / "eval" / "test-1" / "results.json").is_file()
    # A second call gets a folder of its own; the first stays.
    main([*args, NO_CALLBACKS, *QUICK_EVAL])
    assert (run / "eval" / "test-2" / "results.json").is_file()
    assert (run / "eval" / "test-1" / "results.json").is_file()
    assert not (run.parent / "version_1").exists()


def test_the_checkpoint_alone_is_enough_and_the_command_line_still_wins(
    dog_run: tuple[Path, Path, Path],
) -> None:
    photos, run, checkpoint = dog_run
    cli = main(["predict", "--ckpt_path", str(checkpoint), NO_CALLBACKS, *QUICK_EVAL])
    assert cli.datamodule.concept_data[0].class_word == "dog"
    assert list((run / "eval").glob("predict-*/manifest.csv"))
    cli = main([
        "predict", "--ckpt_path", str(checkpoint), NO_CALLBACKS, *QUICK_EVAL,
        "--data.init_args.class_word", "puppy",
    ])  # fmt: skip
    assert cli.datamodule.concept_data[0].class_word == "puppy"


def test_a_checkpoint_outside_a_run_changes_nothing(tmp_path: Path) -> None:
    loose = tmp_path / "model.ckpt"
    loose.write_bytes(b"")
    argv = ["test", "--config", "x.yaml", "--ckpt_path", str(loose)]
    assert run_folder_of(loose) is None and with_run_config(argv) == argv
    assert with_run_config(["fit", "--ckpt_path", str(loose)]) == ["fit", "--ckpt_path", str(loose)]
    assert option_value(["--ckpt_path=a", "--ckpt_path", "b"], "--ckpt_path") == "b"

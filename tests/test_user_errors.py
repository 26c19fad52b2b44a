"""Bad input from the command line: one line ``error: ...`` naming the problem and the fix,
exit code 2, no traceback, and nothing already written changes (earlier runs, exports,
class images)."""

from __future__ import annotations

import hashlib
import pickle
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import REPO_ROOT
from PIL import Image

from train import run_from_command_line

CUSTOM_DIFFUSION = str(REPO_ROOT / "configs" / "custom_diffusion.yaml")
TINY = str(REPO_ROOT / "configs" / "tiny.yaml")


def photos(folder: Path, count: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (40, 40), (60 * i, 90, 120)).save(folder / f"{i:02d}.png")
    return folder


def pickled_checkpoint(root: Path) -> Path:
    path = root / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Path("x")}, path)  # a Path is a pickled object
    return path


def bad_yaml(root: Path) -> Path:
    path = root / "bad.yaml"
    path.write_text("trainer:\n  max_steps: [1\n")
    return path


def tiny_photos(root: Path) -> Path:
    folder = root / "tiny-photos"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        Image.new("RGB", (1, 1), (10 * i, 0, 0)).save(folder / f"{i:02d}.png")
    return folder


def captioned_photos(root: Path, caption: str, encoding: str = "utf-8") -> Path:
    folder = photos(root / "captioned")
    (folder / "captions.txt").write_bytes(f"00.png: {caption}\n".encode(encoding))
    return folder


def file_at(root: Path, name: str, data: bytes = b"not a checkpoint") -> Path:
    path = root / name
    path.write_bytes(data)
    return path


def folder_at(root: Path, name: str) -> Path:
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def photo_args(folder: str) -> list[str]:
    """The photo folder and its class word (the tiny overlay keeps whatever concept it gets)."""
    return ["--data.init_args.instance_data_dir", folder, "--data.init_args.class_word", "toy"]


def regularizer(class_path: str, **init_args: object) -> list[str]:
    args = ", ".join(f"{k}: {v}" for k, v in {"weight": 1, **init_args}.items())
    value = f"[{{class_path: {class_path}, init_args: {{{args}}}}}]"
    return ["--model.init_args.regularizers", value]


def huge_photo(root: Path) -> Path:
    """Photos and one of 20000x20000 px (one colour, 1 bit: a small PNG) that PIL refuses."""
    folder = photos(root / "huge")
    Image.new("1", (20_000, 20_000)).save(folder / "03.png")
    with pytest.raises(Image.DecompressionBombError):  # what the photo stands for
        Image.open(folder / "03.png")
    return folder


def latin1_file(root: Path, name: str, text: str) -> Path:
    """A text file saved as Latin-1, not UTF-8 (its 'é' is the byte 0xe9)."""
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("latin-1"))
    return path


def corrupt_photo(root: Path) -> Path:
    folder = photos(root / "corrupt")
    (folder / "03.png").write_bytes(b"not a png at all")
    return folder


# (extra command-line arguments given the tmp folder, text the message must contain)
CASES: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "token exists": (lambda r: ["--data.init_args.concept_token", "dog"], "already exists"),
    "missing photo folder": (
        lambda r: photo_args(str(r / "nowhere")),
        "does not exist; set instance_data_dir",
    ),
    "photo folder is a file": (
        lambda r: photo_args(str(bad_yaml(r))),
        "is a file, not a folder",
    ),
    "empty photo folder": (
        lambda r: photo_args(str(photos(r / "empty", 0))),
        "holds no images",
    ),
    "unreadable photo": (
        lambda r: photo_args(str(corrupt_photo(r))),
        "Cannot read image",
    ),
    "missing model folder": (
        lambda r: ["--model.init_args.pretrained_model_name_or_path", str(r / "no-model")],
        "model folder",
    ),
    "not an integer": (lambda r: ["--trainer.max_steps", "abc"], 'Parser key "trainer.max_steps"'),
    "yaml syntax": (lambda r: ["--config", str(bad_yaml(r))], "bad.yaml is not valid YAML"),
    "missing config": (lambda r: ["--config", str(r / "none.yaml")], "File does not exist"),
    "unknown option": (lambda r: ["--nope", "1"], "unrecognized arguments"),
    "missing checkpoint": (lambda r: ["--ckpt_path", str(r / "none.ckpt")], "does not exist"),
    "pickled checkpoint": (
        lambda r: ["--ckpt_path", str(pickled_checkpoint(r))],
        "holds pickled Python objects",
    ),
    "template without placeholder": (
        lambda r: ["--data.init_args.prompt_templates", '["a photo"]'],
        "{}",
    ),
    "negative prior weight": (
        lambda r: ["--model.init_args.prior_loss_weight", "-1"],
        "prior_loss_weight must be >= 0",
    ),
    "nan regularizer weight": (
        lambda r: [
            "--model.init_args.regularizers",
            "[{class_path: losses.spl.SemanticPreservationLoss, init_args: {weight: .nan}}]",
        ],
        "a weight is a finite number >= 0",
    ),
    "negative regularizer weight": (
        lambda r: [
            "--model.init_args.regularizers",
            "[{class_path: losses.spl.SemanticPreservationLoss, init_args: {weight: -1}}]",
        ],
        "has weight -1",
    ),
    "zero steps": (lambda r: ["--trainer.max_steps", "0"], "trainer.max_steps is 0"),
    "resolution off the VAE factor": (
        lambda r: ["--data.init_args.resolution", "33"],
        "resolution 33 is not a multiple of 2",
    ),
    "photo far smaller than the resolution": (
        lambda r: [
            *photo_args(str(tiny_photos(r))),
            "--data.init_args.resolution", "64",
        ],
        "less than a quarter of the training resolution 64",
    ),  # fmt: skip
    "an option from an older config": (
        lambda r: ["--data.init_args.num_class_images", "3"],
        "it moved to data.init_args.class_images.count",
    ),
    "token with a space": (
        lambda r: ["--data.init_args.concept_token", "<v 1>"],
        "without spaces",
    ),
    "prior without class images": (
        lambda r: [
            "--model.init_args.prior_loss_weight", "1",
            "--data.init_args.class_images.folder", "null",
        ],
        "class_images.folder",
    ),  # fmt: skip
    # Beyond the list: what the other options and subcommands let through.
    "class prompt naming another class": (
        lambda r: [
            "--model.init_args.prior_loss_weight", "1",
            "--data.init_args.class_images.prompt", "a photo of a cat",
        ],
        "does not name the class word 'toy'",
    ),  # fmt: skip
    "empty class word": (lambda r: ["--data.init_args.class_word", ""], "class_word is empty"),
    "photos without a class word": (
        lambda r: ["--data.init_args.instance_data_dir", str(photos(r / "dog"))],
        "class_word is required with instance_data_dir",
    ),
    "second concept's photos without a class word": (
        lambda r: [
            "--data.init_args.additional_concepts",
            f"[{{token: '<v2>', instance_data_dir: {photos(r / 'second')}}}]",
        ],
        "has photos",
    ),
    "two concepts with one token": (
        lambda r: ["--data.init_args.additional_concepts", "[{token: '<v1>', class_word: dog}]"],
        "Concept tokens must differ",
    ),
    "flip probability above 1": (
        lambda r: ["--data.init_args.flip_probability", "1.5"],
        "flip_probability is a chance in [0, 1]",
    ),
    "batch size 0": (
        lambda r: ["--data.init_args.batch_size", "0"],
        "data.init_args.batch_size is 0; it must be >= 1",
    ),
    "repeats 0": (
        lambda r: ["--data.init_args.repeats", "0"],
        "data.init_args.repeats is 0; it must be >= 1",
    ),
    "resolution 4": (
        lambda r: ["--data.init_args.resolution", "4"],
        "data.init_args.resolution is 4; it must be >= 8",
    ),
    "photo of 20000x20000 px": (
        lambda r: photo_args(str(huge_photo(r))),
        "03.png' is 20000x20000 px (400,000,000 pixels), over the 178,956,970 PIL opens "
        "safely; use a smaller copy (e.g. 2048 px on the long side)",
    ),
    "evaluation prompt file not UTF-8": (
        lambda r: [
            "--data.init_args.eval_prompts.source",
            str(latin1_file(r, "prompts.txt", "a {} on the beach\na {} in a café\n")),
        ],
        "prompts.txt is not UTF-8 text: byte 0xe9 at line 2, column 14 cannot be decoded; "
        "save the file as UTF-8",
    ),
    "captions.txt not UTF-8": (
        lambda r: [
            *regularizer("losses.dd_loss.DenoisingDecoupleLoss"),
            *photo_args(str(captioned_photos(r, "a {} in a café", "latin-1"))),
        ],
        "captions.txt is not UTF-8 text: byte 0xe9 at line 1, column 22 cannot be decoded; "
        "save the file as UTF-8",
    ),
    "negative noise offset": (
        lambda r: ["--model.init_args.noise_offset", "-1"],
        "noise_offset must be finite and >= 0",
    ),
    "negative warm-up": (
        lambda r: ["--model.init_args.lr_warmup_steps", "-3"],
        "lr_warmup_steps must be >= 0",
    ),
    "unknown learning-rate group": (
        lambda r: ["--model.init_args.learning_rates", "{nope: 1.0e-3}"],
        "groups are ['kv', 'tokens']",
    ),
    "negative max_steps": (lambda r: ["--trainer.max_steps", "-5"], "You passed in -5"),
    "accumulate 0 batches": (
        lambda r: ["--trainer.accumulate_grad_batches", "0"],
        "accumulate_grad_batches is 0",
    ),
    "checkpoint is a folder": (
        lambda r: ["--ckpt_path", str(folder_at(r, "run.ckpt"))],
        "is a folder; give a .ckpt file in it",
    ),
    "checkpoint is not a checkpoint": (
        lambda r: ["--ckpt_path", str(file_at(r, "notes.ckpt"))],
        "is not a PyTorch checkpoint",
    ),
    "regularizer class typo": (
        lambda r: regularizer("losses.spl.SemanticPreservationLos"),
        "has no attribute 'SemanticPreservationLos'",
    ),
    "model class typo": (
        lambda r: ["--model", "models.CustomDifusion"],
        "has no attribute 'CustomDifusion'",
    ),
    "mlm without its pretrained contextualizer": (
        lambda r: regularizer("losses.mlm.MaskedLanguageModelingLoss", contextualizer_dir=r / "no"),
        "needs a pretrained contextualizer",
    ),
    "ddloss caption without placeholder": (
        lambda r: [
            *regularizer("losses.dd_loss.DenoisingDecoupleLoss"),
            *photo_args(str(captioned_photos(r, "a toy in a park"))),
        ],
        "must contain the concept placeholder",
    ),  # fmt: skip
    "captioner folder missing": (
        lambda r: [
            *regularizer("losses.dd_loss.DenoisingDecoupleLoss"),
            *photo_args(str(photos(r / "uncaptioned"))),
            "--data.init_args.captions.captioner", str(r / "no-captioner"),
        ],
        "cannot be loaded here (no such folder)",
    ),  # fmt: skip
    "evaluation prompt file missing": (
        lambda r: ["--data.init_args.eval_prompts.source", str(r / "prompts.txt")],
        "does not exist; give a text file with one prompt per line",
    ),
    "hub id neither cached nor reachable": (
        lambda r: ["--model.init_args.pretrained_model_name_or_path", "owner/not-cached"],
        "'owner/not-cached' is not in the local Hugging Face cache",
    ),
    "unknown evaluation scheduler": (
        lambda r: ["--model.init_args.evaluation.scheduler", "nope"],
        "Unknown sampling scheduler 'nope'",
    ),
}
if not torch.cuda.is_available():  # where there is no GPU, asking for one is a user error
    CASES["gpu asked for on a machine without one"] = (
        lambda r: ["--trainer.accelerator", "gpu"],
        "--trainer.accelerator cpu",
    )


def assert_one_clear_line(code: int, err: str, expected: str) -> None:
    """Exit code 2 and exactly one ``error:`` line holding ``expected``, no traceback."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and expected in lines[0], err[-2000:]
    assert "Traceback" not in err


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_clear_line_and_changes_nothing(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    make_args, expected = CASES[case]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # the command line sets it: put it back
    earlier = tmp_path / "runs" / "earlier"  # what an earlier run left
    (earlier / "export").mkdir(parents=True)
    (earlier / "export" / "learned_embeds.safetensors").write_bytes(b"weights")
    photos(tmp_path / "runs" / "tiny" / "class_images", 2)
    extra = make_args(tmp_path)
    before = snapshot(tmp_path)
    args = ["fit", "--config", CUSTOM_DIFFUSION, "--config", TINY]
    args += ["--trainer.default_root_dir", str(tmp_path / "runs"), *extra]
    assert_one_clear_line(run_from_command_line(args), capsys.readouterr().err, expected)
    after = snapshot(tmp_path)
    assert {k: after.get(k) for k in before} == before  # nothing earlier changed or went


def test_debug_shows_the_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", CUSTOM_DIFFUSION, "--config", TINY, "--debug"]
    with pytest.raises(ValueError, match="already exists"):
        run_from_command_line([*args, "--data.init_args.concept_token", "dog"])


def test_the_pickled_checkpoint_is_refused_before_unpickling(tmp_path: Path) -> None:
    from training.safe_checkpoints import UnsafeCheckpointError, check_loads_weights_only

    path = pickled_checkpoint(tmp_path)
    with pytest.raises(UnsafeCheckpointError, match="pickled"):
        check_loads_weights_only(path)
    assert pickle.loads(pickle.dumps(Path("x"))) == Path("x")  # the payload is a real object

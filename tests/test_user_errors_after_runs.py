"""Bad input and a full disk met after a run has trained, from the command line: resuming a
checkpoint with other settings, a damaged checkpoint, a cache path that is a file, a context
prompt file that is not UTF-8, and a disk that fills up during an export. Each is one line
``error: ...`` naming the file or option and the fix (exit code 2; the full disk, an error of
the machine: 1), no traceback, and nothing written earlier changes."""

from __future__ import annotations

import errno
import io
import shutil
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from helpers import REPO_ROOT
from safetensors import SafetensorError
from safetensors.torch import load_file
from test_user_errors import assert_one_clear_line, photos, snapshot

import models.base
from train import run_from_command_line

pytestmark = pytest.mark.slow  # runs training end to end, or a process grid

CONFIGS = REPO_ROOT / "configs"
TINY = ["--config", str(CONFIGS / "tiny.yaml")]
LORA = ["--config", str(CONFIGS / "lora.yaml"), *TINY]
CUSTOM_DIFFUSION = ["--config", str(CONFIGS / "custom_diffusion.yaml"), *TINY]
TEXTUAL_INVERSION = ["--config", str(CONFIGS / "textual_inversion.yaml"), *TINY]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.max_steps"]


def fit(root: Path, config: list[str], *extra: str) -> list[str]:
    return ["fit", *config, "--trainer.default_root_dir", str(root), *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """last.ckpt of a 2-step LoRA (rank 4) run and of a 2-step Custom Diffusion run."""
    root = tmp_path_factory.mktemp("trained")
    photos(root / "runs" / "tiny" / "class_images" / "toy", 4)  # CD's prior: none generated
    checkpoints = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setattr(sys, "argv", sys.argv[:1])
        for name, config in (("lora", LORA), ("cd", CUSTOM_DIFFUSION)):
            assert run_from_command_line(fit(root / name, config, *QUIET, "2")) == 0
            (checkpoints[name],) = (root / name).rglob("last.ckpt")
        yield checkpoints


@pytest.fixture
def at_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test's folder as the working directory (class images in it), sys.argv put back."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # the command line sets it: put it back
    photos(tmp_path / "runs" / "tiny" / "class_images" / "toy", 4)
    return tmp_path


def run_unchanged(root: Path, argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """Run the command; assert nothing that was under ``root`` before changed or went."""
    before = snapshot(root)
    code = run_from_command_line(argv)
    after = snapshot(root)
    assert {k: after.get(k) for k in before} == before
    return code, capsys.readouterr().err


# ----- resuming a checkpoint with settings other than its own -------------------------------
@pytest.mark.slow
def test_a_lora_checkpoint_resumed_with_another_rank(
    trained: dict[str, Path], at_tmp: Path, capsys: pytest.CaptureFixture
) -> None:
    checkpoint = at_tmp / "lora" / "checkpoints" / "last.ckpt"  # beside its run's config.yaml
    shutil.copytree(trained["lora"].parent.parent, at_tmp / "lora")
    argv = fit(at_tmp / "runs", LORA, *QUIET, "4", "--ckpt_path", str(checkpoint))
    code, err = run_unchanged(at_tmp, [*argv, "--model.init_args.rank", "8"], capsys)
    assert_one_clear_line(code, err, "lora_A")
    assert_one_clear_line(code, err, "is [4, ")
    assert_one_clear_line(code, err, "but [8, ")
    own_config = at_tmp / "lora" / "config.yaml"
    fix = f"resume with the settings the checkpoint was trained with (--config {own_config})"
    assert_one_clear_line(code, err, fix)


@pytest.mark.slow
def test_a_custom_diffusion_checkpoint_resumed_as_textual_inversion(
    trained: dict[str, Path], at_tmp: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = fit(at_tmp / "runs", TEXTUAL_INVERSION, *QUIET, "4", "--ckpt_path", str(trained["cd"]))
    code, err = run_unchanged(at_tmp, argv, capsys)
    what = "weights that TextualInversion with these settings does not train (e.g. 'unet."
    assert_one_clear_line(code, err, what)
    assert_one_clear_line(code, err, "resume with the settings the checkpoint was trained with")


# ----- a damaged checkpoint is not called a pickled one -------------------------------------
def flip(data: bytes, offset: int, count: int = 8) -> bytes:
    """``count`` bytes from ``offset`` on inverted."""
    return (
        data[:offset]
        + bytes(b ^ 0xFF for b in data[offset : offset + count])
        + data[offset + count :]
    )


def member_offset(data: bytes, suffix: str) -> tuple[int, int]:
    """Where the bytes of the archive's first member ending in ``suffix`` start, and its size."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(suffix))
    header = data[info.header_offset : info.header_offset + 30]
    skip = 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
    return info.header_offset + skip, info.file_size


def in_the_middle_of(suffix: str) -> Callable[[bytes], bytes]:
    def corrupt(data: bytes) -> bytes:
        start, size = member_offset(data, suffix)
        return flip(data, start + size // 2)

    return corrupt


def with_valid_checksums(data: bytes) -> bytes:
    """data.pkl's first byte (its PROTO opcode) changed and the archive rewritten with matching
    checksums: what torch itself reads as a pickle it cannot understand."""
    source, target = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with source, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for info in source.infolist():
            content = source.read(info)
            if info.filename.endswith("data.pkl"):
                content = flip(content, 0, 1)
            archive.writestr(info, content)
    return target.getvalue()


CORRUPTIONS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "data.pkl's middle": (in_the_middle_of("data.pkl"), "its block 'archive/data.pkl' does not"),
    "data.pkl's start": (lambda d: flip(d, member_offset(d, "data.pkl")[0]), "data.pkl"),
    "a tensor block": (in_the_middle_of("data/0"), "its block 'archive/data/0' does not match"),
    "the archive's index": (lambda d: flip(d, len(d) - 60, 30), "damaged"),
    "cut in half": (lambda d: d[: len(d) // 2], "cut short"),
    "zeros in the middle": (
        lambda d: d[: len(d) // 2] + bytes(64) + d[len(d) // 2 + 64 :],
        "damaged",
    ),
    "data.pkl changed, checksums valid": (with_valid_checksums, "(Unsupported operand"),
}


@pytest.mark.slow
@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_damaged_checkpoint_is_called_damaged(
    corruption: str, trained: dict[str, Path], at_tmp: Path, capsys: pytest.CaptureFixture
) -> None:
    corrupt, detail = CORRUPTIONS[corruption]
    damaged = at_tmp / "damaged.ckpt"
    damaged.write_bytes(corrupt(trained["lora"].read_bytes()))
    assert damaged.read_bytes() != trained["lora"].read_bytes()
    argv = fit(at_tmp / "runs", LORA, *QUIET, "4", "--ckpt_path", str(damaged))
    code, err = run_unchanged(at_tmp, argv, capsys)
    expected = f"checkpoint '{damaged}' is damaged or is not a PyTorch checkpoint ("
    assert_one_clear_line(code, err, expected)
    assert_one_clear_line(code, err, detail)
    fix = "give another checkpoint of the run (its last.ckpt, or an earlier step's .ckpt in its"
    assert_one_clear_line(code, err, fix)
    assert "pickled" not in err
    torch.load(trained["lora"], weights_only=True)  # the intact one still loads


# ----- PERSONALIZE_CACHE at a file; a context prompt file that is not UTF-8 -----------------
def test_a_cache_variable_pointing_at_a_file(
    at_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    file = at_tmp / "cache.txt"
    file.write_text("a file, not a folder")
    monkeypatch.setenv("PERSONALIZE_CACHE", str(file))
    code, err = run_unchanged(at_tmp, fit(at_tmp / "runs", CUSTOM_DIFFUSION), capsys)
    fix = "point PERSONALIZE_CACHE at a folder (it is created if missing)."
    assert_one_clear_line(code, err, f"PERSONALIZE_CACHE '{file}' is a file, not a folder; {fix}")


def test_a_context_prompt_file_that_is_not_utf8(
    at_tmp: Path, capsys: pytest.CaptureFixture
) -> None:
    prompts = at_tmp / "context.txt"
    prompts.write_bytes("a {} on the moon\na {} in a café\n".encode("cp1252"))
    config = ["--config", str(CONFIGS / "diverse_context" / "contextualizer.yaml"), *TINY]
    argv = fit(at_tmp / "runs", config, "--data.init_args.prompts_file", str(prompts))
    code, err = run_unchanged(at_tmp, argv, capsys)
    where = f"{prompts} is not UTF-8 text: byte 0xe9 at line 2, column 14 cannot be decoded"
    assert_one_clear_line(code, err, f"{where}; save the file as UTF-8")


# ----- a full disk during an export ---------------------------------------------------------
NO_SPACE = 'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'  # noqa: E501


def filling_writer(fail_at: int, error: Callable[[str], BaseException]) -> Callable[..., None]:
    """models.base's safetensors writer, whose ``fail_at``-th call writes part of its file and
    then fails as on a full disk."""
    calls, save_file = [0], models.base.save_file

    def write(tensors: dict[str, torch.Tensor], path: str, *args: object, **kwargs: object) -> None:
        calls[0] += 1
        if calls[0] != fail_at:
            return save_file(tensors, path, *args, **kwargs)
        Path(path).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{")  # a header cut short
        raise error(path)

    return write


FULL_DISKS: dict[str, tuple[int, Callable[[str], BaseException], str]] = {
    # The final export (export/.final.partial) is written first, then last.ckpt's step export.
    "safetensors, final export": (1, lambda path: SafetensorError(NO_SPACE), ""),
    "safetensors, step export": (2, lambda path: SafetensorError(NO_SPACE), ""),
    "OSError, step export": (
        2,
        lambda path: OSError(errno.ENOSPC, "No space left on device", path),
        " writing ",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(FULL_DISKS))
def test_a_full_disk_during_an_export(
    case: str, at_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    fail_at, error, named = FULL_DISKS[case]
    earlier = at_tmp / "runs" / "textual_inversion" / "version_0" / "export"
    earlier.mkdir(parents=True)
    (earlier / "learned_embeds.safetensors").write_bytes(b"an earlier run's weights")
    monkeypatch.setattr(models.base, "save_file", filling_writer(fail_at, error))
    code, err = run_unchanged(at_tmp, fit(at_tmp / "runs", TEXTUAL_INVERSION, *QUIET, "2"), capsys)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert lines[0].startswith(f"error: no space left on device{named}"), lines[0]
    fix = "free space or point trainer.default_root_dir (or PERSONALIZE_CACHE) at a disk with room"
    assert f"; {fix}; resume from the last checkpoint" in lines[0], lines[0]
    if named:
        assert ".step-2.pending/learned_embeds.safetensors" in lines[0]
    hidden = [p for p in (at_tmp / "runs").rglob(".*")]
    assert not hidden, hidden  # no .step-N.pending, .final.partial or partial checkpoint
    if fail_at == 2:  # the final export before the failure is whole
        (run,) = [p.parent for p in (at_tmp / "runs").rglob("config.yaml")]
        assert load_file(run / "export" / "learned_embeds.safetensors")

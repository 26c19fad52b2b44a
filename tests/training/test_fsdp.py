"""configs/flux/fsdp.yaml: the wrap policy and the activation checkpointing Lightning gets pick
exactly FLUX's double- and single-stream blocks; what cannot run (a CPU, an unknown class, a
sharded checkpoint) is one clear line. Lightning's FSDP itself runs only on CUDA GPUs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO_ROOT
from test_user_errors import assert_one_clear_line
from torch import nn

from pretrained.tiny_flux import ensure_tiny_flux
from train import run_from_command_line
from training.fsdp import BlockFSDP

OVERLAY = REPO_ROOT / "configs" / "flux" / "fsdp.yaml"
FLUX_DREAMBOOTH = [
    "fit", "--config", "configs/dreambooth.yaml", "--config", "configs/backbones/flux.yaml",
    "--config", "configs/tiny.yaml", "--config", "configs/flux/fsdp.yaml",
]  # fmt: skip


def overlay_strategy() -> BlockFSDP:
    init_args = yaml.safe_load(OVERLAY.read_text())["trainer"]["strategy"]["init_args"]
    return BlockFSDP(**init_args)


def chosen(policy: object, model: nn.Module) -> set[str]:
    return {name for name, module in model.named_modules() if policy(module, recurse=False)}


def test_each_flux_block_is_one_shard_unit_and_is_recomputed() -> None:
    from diffusers.models import FluxTransformer2DModel

    transformer = FluxTransformer2DModel.from_pretrained(ensure_tiny_flux() / "transformer")
    blocks = {f"transformer_blocks.{i}" for i in range(len(transformer.transformer_blocks))}
    blocks |= {
        f"single_transformer_blocks.{i}" for i in range(len(transformer.single_transformer_blocks))
    }
    strategy = overlay_strategy()
    assert chosen(strategy.kwargs["auto_wrap_policy"], transformer) == blocks
    checkpointed = strategy._activation_checkpointing_kwargs["auto_wrap_policy"]
    assert chosen(checkpointed, transformer) == blocks
    # frozen encoders and VAE share the root unit with the trained embedders
    assert strategy.kwargs["use_orig_params"] is True


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (["--trainer.accelerator", "cpu"], "FSDP (training.fsdp.BlockFSDP) shards over CUDA GPUs"),
        (["--trainer.strategy.init_args.blocks=[diffusers.NoSuchBlock]"], "NoSuchBlock' is not"),
        (["--trainer.strategy.init_args.state_dict_type=sharded"], "only 'full' checkpoints"),
    ],
)
def test_what_fsdp_cannot_run_is_one_line_and_writes_nothing(
    option: list[str], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    code = run_from_command_line(
        [*FLUX_DREAMBOOTH, *option, "--trainer.default_root_dir", str(tmp_path)]
    )
    assert_one_clear_line(code, capsys.readouterr().err, expected)
    assert not any(tmp_path.iterdir())

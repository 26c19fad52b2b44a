"""Bad input on FLUX from the command line: one line ``error: ...`` naming the fix, exit 2,
nothing written: an XTI config (no per-layer text input), guidance on schnell, a DDPM-only
option (a DDPM sampler, DDLoss's DDPM step weight), flow-matching options on a DDPM model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import REPO_ROOT
from test_user_errors import assert_one_clear_line, snapshot

from train import run_from_command_line

CONFIGS = REPO_ROOT / "configs"
FLUX = ["--config", str(CONFIGS / "backbones/flux.yaml"), "--config", str(CONFIGS / "tiny.yaml")]
LORA = ["--config", str(CONFIGS / "lora.yaml")]
CASES: dict[str, tuple[list[str], str]] = {
    "xti on flux": (
        ["--config", str(CONFIGS / "xti.yaml"), *FLUX],
        "no per-layer text input for P+'s per-layer tokens",
    ),
    "guidance on schnell": (
        [*LORA, *FLUX, "--model.init_args.pretrained_model_name_or_path", "tiny-flux-schnell"],
        "FLUX.1-schnell is timestep-distilled",
    ),
    "a ddpm sampler on flux": (
        [*LORA, *FLUX, "--model.init_args.evaluation.scheduler", "ddim"],
        "use one of flow_match_euler, or leave it unset",
    ),
    "ddloss's ddpm step weight on flux": (
        [*LORA, *FLUX, "--model.init_args.regularizers+=losses.dd_loss.DenoisingDecoupleLoss",
         "--model.init_args.regularizers.init_args.time_weight=index"],
        "leave time_weight at paper on FLUX",
    ),  # fmt: skip
    "flow matching options on sd": (
        [*LORA, "--config", str(CONFIGS / "tiny.yaml"),
         "--model.init_args.flow_matching.weighting_scheme", "logit_normal"],
        "trains with DDPM noise prediction; leave flow_matching out",
    ),  # fmt: skip
    "an unknown weighting scheme": (
        [*LORA, *FLUX, "--model.init_args.flow_matching.weighting_scheme", "snr"],
        "use one of none, logit_normal, mode, sigma_sqrt, cosmap",
    ),
    "a sampler for flux on sd": (
        [*LORA, "--config", str(CONFIGS / "tiny.yaml"),
         "--model.init_args.evaluation.scheduler", "flow_match_euler"],
        "is a DDPM model; use one of",
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_flux_input_is_one_clear_line_and_changes_nothing(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    args, expected = CASES[case]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    (tmp_path / "runs" / "earlier").mkdir(parents=True)
    (tmp_path / "runs" / "earlier" / "weights.safetensors").write_bytes(b"weights")
    before = snapshot(tmp_path)
    code = run_from_command_line(
        ["fit", *args, "--trainer.default_root_dir", str(tmp_path / "runs")]
    )
    assert_one_clear_line(code, capsys.readouterr().err, expected)
    after = snapshot(tmp_path)
    assert {k: after.get(k) for k in before} == before

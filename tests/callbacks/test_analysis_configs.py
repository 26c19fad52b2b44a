"""The analysis callbacks are on in the configs, and a config run logs all their tags."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import REPO_ROOT, is_overlay
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from train import main

ANALYSIS = {"callbacks.SemanticDrift", "callbacks.AttentionMaps", "callbacks.TextSemantics"}


# Experiment configs without the analysis callbacks, and why.
NOT_ANALYSED = {
    "diverse_context/contextualizer.yaml": "psi's pretraining: no concept yet",
    "accord/ip_adapter.yaml": "the concept is the reference image: prompts hold no token",
    "clif/mix_of_show_fused.yaml": "test only: scores a fused export, nothing trains",
}
EXPERIMENT_CONFIGS = sorted(
    name
    for name in (str(p.relative_to(REPO_ROOT / "configs"))
                 for p in (REPO_ROOT / "configs").rglob("*.yaml"))
    if not is_overlay(REPO_ROOT / "configs" / name) and name not in NOT_ANALYSED
)  # fmt: skip


@pytest.mark.parametrize("config", EXPERIMENT_CONFIGS)
def test_config_enables_the_analysis_callbacks(config: str) -> None:
    settings = yaml.safe_load((REPO_ROOT / "configs" / config).read_text())
    paths = {c["class_path"] for c in settings["trainer"]["callbacks"]}
    assert paths >= ANALYSIS


@pytest.mark.slow
def test_quickstart_with_the_tiny_overlay_logs_every_analysis_tag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    main(
        [
            "fit",
            "--config", "configs/quickstart.yaml",
            "--config", "configs/tiny.yaml",
            "--trainer.default_root_dir", str(tmp_path),
            "--trainer.logger.init_args.save_dir", str(tmp_path),
            "--trainer.max_steps", "3",
        ]
    )  # fmt: skip
    (folder,) = {p.parent for p in tmp_path.rglob("events.out.tfevents*")}
    events = EventAccumulator(str(folder))
    events.Reload()
    scalars = {"drift/rank", "drift/cosine", "attn/class_activation", "attn/skl"}
    assert scalars | {"text/sim1", "text/sim2"} <= set(events.Tags()["scalars"])
    images = {"drift/tsne", "attn/<v1>", "attn/toy", "attn/beach", "attn/jungle", "attn/grid"}
    assert images <= set(events.Tags()["images"])
    # Step 0 and the end of training (3 steps here).
    assert [e.step for e in events.Scalars("drift/rank")] == [0, 3]
    assert all(1 <= e.value <= 71 for e in events.Scalars("drift/rank"))

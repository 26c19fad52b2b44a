"""Exact resume from a checkpoint taken on an epoch's last batch, for every baseline and every
regularizer: 7 straight steps == 3 steps (one whole epoch of 3 batches), then 4 from there."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from baseline_checks import assert_resume_is_exact
from helpers import CLASS_PROMPT, optimizer_with_lr, tiny_datamodule, write_class_folder

from datamodules import ConceptData
from datamodules.extras.class_images import ClassImageOptions
from losses.dd_loss import DenoisingDecoupleLoss
from losses.mlm import MaskedLanguageModelingLoss
from losses.pd_loss import PriorDecoupleLoss
from losses.spl import SemanticPreservationLoss
from losses.sude import SubjectDerivedLoss
from models import XTI, CustomDiffusion, DreamBooth, LoRA, TextualInversion, VisualEncoder

ONE_EPOCH = {"repeats": 1}  # 5 synthetic photos at batch 2: 3 batches an epoch


def baseline_case(cls: type, **data: Any) -> Callable[[Path, Path], Any]:
    def build(root: Path, psi_dir: Path) -> Any:
        if cls is DreamBooth:
            folder = write_class_folder(root / "class", count=3)
            data.update(class_images=ClassImageOptions(str(folder), CLASS_PROMPT, count=3))
        datamodule = tiny_datamodule(**ONE_EPOCH, **data)
        settings: dict[str, Any] = {"concepts": datamodule.concepts}
        settings["optimizer"] = optimizer_with_lr(1e-3 if cls is DreamBooth else 1e-2)
        return cls(**settings), datamodule

    return build


def regularizer_case(make: Callable[[Path], Any]) -> Callable[[Path, Path], Any]:
    def build(root: Path, psi_dir: Path) -> Any:
        datamodule = tiny_datamodule(**ONE_EPOCH, rescale_augmentation=True)
        module = CustomDiffusion(
            concepts=datamodule.concepts,
            regularizers=[make(psi_dir)],
            optimizer=optimizer_with_lr(1e-2),
        )
        return module, datamodule

    return build


CASES = {
    "textual_inversion": baseline_case(TextualInversion),
    "custom_diffusion": baseline_case(CustomDiffusion, rescale_augmentation=True),
    "dreambooth": baseline_case(DreamBooth),
    "lora": baseline_case(LoRA),
    "xti": baseline_case(XTI),
    "visual_encoder": baseline_case(
        VisualEncoder,  # two subjects of 3 photos: 3 batches an epoch too
        shared_tokens=True,
        additional_concepts=[ConceptData("<v1>")],
        synthetic_num_images=3,
    ),
    "spl": regularizer_case(lambda psi: SemanticPreservationLoss()),
    "dd": regularizer_case(lambda psi: DenoisingDecoupleLoss()),
    "pd": regularizer_case(lambda psi: PriorDecoupleLoss()),
    "sude": regularizer_case(lambda psi: SubjectDerivedLoss(truncation="none")),
    "mlm": regularizer_case(lambda psi: MaskedLanguageModelingLoss(contextualizer_dir=str(psi))),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_resume_from_the_epochs_last_batch_is_exact(
    case: str, tmp_path: Path, psi_dir: Path
) -> None:
    assert_resume_is_exact(lambda: CASES[case](tmp_path, psi_dir), tmp_path, total_steps=7)

"""Styles as a concept kind (ACCORD's Table 3): prompts, synthetic styles, refusals, Gram-D
telling styles apart, and the Table 3 rows through the benchmark runner on a StyleBench-layout
folder."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO_ROOT
from test_cli import cli_args
from test_user_errors import assert_one_clear_line

from benchmark.pair import parse_method
from benchmark.runner import run_benchmark
from benchmark.subjects import parse_subject, stylebench_subjects
from datamodules.personalization import PersonalizationDataModule
from metrics.gram_d import GramDistance
from metrics.images import pil_to_tensor
from preparation.synthetic_style import STYLES, draw_synthetic_style
from train import run_from_command_line

STYLE_OVERLAY = "configs/accord/style.yaml"
QUICK = [  # one step, one content prompt x 2 images: this test is about the rows and columns
    "trainer.max_steps=1",
    "trainer.callbacks=[]",
    "data.init_args.eval_prompts.max_prompts=1",
    "data.init_args.eval_prompts.images_per_prompt=2",
]


def test_a_style_concept_trains_on_style_prompts_and_is_scored_on_contents() -> None:
    data = PersonalizationDataModule(concept_kind="style", resolution=32, repeats=1)
    (concept,) = data.concepts
    assert concept.is_style and concept.phrase == "<v1> style"
    assert data.templates[0] == "a painting in the style of {}"
    assert data.eval_prompt_set == "style" and len(data.eval_templates) >= 25
    first = data.eval_templates[0].format(concept.phrase)
    assert first == "a dog sitting on the grass, in <v1> style"
    # Without images: synthetic style 0, whose palette is in every image.
    background = STYLES[0].background
    for image in data.images[0]:
        corner = image.convert("RGB").getpixel((0, 0))
        assert max(abs(a - b) for a, b in zip(corner, background)) < 40


def test_the_superclass_is_the_class_word_and_configurable() -> None:
    data = PersonalizationDataModule(
        concept_kind="style", class_word="watercolor style", resolution=32, repeats=1
    )
    assert data.concepts[0].phrase == "<v1> watercolor style"
    subject = PersonalizationDataModule(resolution=32, repeats=1)
    assert not subject.concepts[0].is_style and subject.eval_prompt_set == "dreambench_object"


@pytest.mark.parametrize(
    ("keys", "what"),
    [({"class_pixel_values"}, "class images"), ({"subject_mask"}, "subject mask")],
)
def test_what_assumes_a_subject_is_refused_for_a_style(keys: set[str], what: str) -> None:
    data = PersonalizationDataModule(concept_kind="style", resolution=32, repeats=1)
    with pytest.raises(ValueError, match=f"Who asks needs .*{what}.*are styles"):
        data.request(keys, "Who asks")


def test_gram_d_puts_an_image_of_the_reference_style_closer() -> None:
    """Same content, two styles: the reference style's image is closer (tiny random VGG)."""
    metric = GramDistance("tiny-vgg", resize=64, crop=64)
    references = [pil_to_tensor(i) for i in draw_synthetic_style(4, 64, seed=0, style=1)]
    metric.set_references(references, "style")
    distances = []
    for style in (1, 2, 3):
        metric.reset()
        generated = torch.stack([pil_to_tensor(i) for i in draw_synthetic_style(2, 64, 5, style)])
        metric.update(generated)
        distances.append(float(metric.compute()))
    assert distances[0] < min(distances[1:]), distances


# (extra options, what the error line must say)
STYLE_ERRORS = {
    "prior preservation": (
        ["--model.init_args.prior_loss_weight", "1.0",
         "--data.init_args.class_images.folder", "class_images"],  # fmt: skip
        "are styles, whose images hold no subject",
    ),
    "clif segmentation": (
        ["--data.init_args.augmentation", "{g_aug: 0, r_aug: 2, m_aug: 0}"],
        "needs a subject to segment",
    ),
}


@pytest.mark.parametrize("case", sorted(STYLE_ERRORS))
def test_a_style_with_a_subject_only_option_is_one_clear_line(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    extra, expected = STYLE_ERRORS[case]
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # the command line sets it: put it back
    args = [*cli_args("dreambooth", tmp_path), "--config", STYLE_OVERLAY, *extra]
    assert_one_clear_line(run_from_command_line(args), capsys.readouterr().err, expected)
    assert not list(tmp_path.rglob("*.safetensors"))


def test_stylebench_folders_are_style_subjects(tmp_path: Path) -> None:
    for style in (0, 1):
        folder = tmp_path / f"style{style}"
        folder.mkdir()
        for index, image in enumerate(draw_synthetic_style(3, 32, style=style)):
            image.save(folder / f"{index}.png")
    subjects = stylebench_subjects(tmp_path)
    assert [(s.name, s.class_word, s.kind) for s in subjects] == [
        ("style0", "style", "style"), ("style1", "style", "style")]  # fmt: skip
    assert parse_subject(subjects[0].spec) == subjects[0]
    with pytest.raises(ValueError, match="one folder of reference images per style"):
        stylebench_subjects(tmp_path / "style0")


TABLE_3_ROWS = [  # (row, config): each baseline, then with ACCORD's losses
    ("dreambooth", "configs/dreambooth.yaml"),
    ("dreambooth_accord", "configs/accord/dreambooth.yaml"),
    ("sude", "configs/sude/dreambooth.yaml"),
    ("sude_accord", "configs/accord/sude_dreambooth.yaml"),
    ("custom_diffusion", "configs/custom_diffusion.yaml"),
    ("custom_diffusion_accord", "configs/accord/custom_diffusion.yaml"),
    ("lora", "configs/lora.yaml"),
    ("lora_accord", "configs/accord/lora.yaml"),
    ("visual_encoder", "configs/visual_encoder.yaml"),
    ("visual_encoder_accord", "configs/accord/visual_encoder.yaml"),
]


@pytest.mark.slow
def test_table_3_rows_run_on_synthetic_styles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every row of Table 3, fit and test on a StyleBench-layout folder of synthetic styles:
    one table, a row each, scored by CLIP-T, BLIP-T and Gram-D (not as a subject)."""
    monkeypatch.chdir(REPO_ROOT)
    root = tmp_path / "stylebench"
    folder = root / "ember-hatch"
    folder.mkdir(parents=True)
    for index, image in enumerate(draw_synthetic_style(3, 64, style=0)):
        image.save(folder / f"{index:02d}.png")
    methods = [parse_method(f"{row}={config}") for row, config in TABLE_3_ROWS]
    overlays = [Path(STYLE_OVERLAY), Path("configs/tiny.yaml")]
    outcome = run_benchmark(
        methods, stylebench_subjects(root), tmp_path / "bench", overlays, QUICK, in_process=True
    )
    assert not outcome["failed"], outcome["failed"]
    with (tmp_path / "bench" / "table.csv").open() as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {row for row, _ in TABLE_3_ROWS}
    for row in rows.values():
        for key in ("clip_t", "blip_t", "gram_d"):
            assert row[key], (key, row)
        assert not row.get("dino_i")  # a style run is not scored as a subject

"""Face-Sim: real faces (scikit-image's astronaut and LFW crops) through the offline cascade and
the tiny ArcFace; the formula against an independent computation on fixed embeddings; the
missing-face count; and the errors when the ArcFace model is not there."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from metrics.face_sim import TINY_ARCFACE_NAME, FaceSimilarity, load_face_model
from metrics.faces import CascadeFaceDetector, Face
from pretrained import tiny_arcface
from pretrained.eval_models import EvalModelNotFoundError
from pretrained.iresnet import IResNet


def tensor(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255


def lfw_face(index: int, side: int = 256) -> np.ndarray:
    grey = cv2.resize(data.lfw_subset()[index], (side, side), interpolation=cv2.INTER_CUBIC)
    return np.repeat((grey.clip(0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def score(metric: FaceSimilarity, images: list[np.ndarray]) -> dict[str, float]:
    metric.reset()
    metric.update(torch.stack([tensor(image) for image in images]))
    return {key: float(value) for key, value in metric.compute().items()}


@pytest.fixture(scope="module")
def metric() -> FaceSimilarity:
    """Tiny ArcFace + the real cascade, references: the astronaut."""
    face_sim = FaceSimilarity("tiny-arcface", detector=CascadeFaceDetector())
    face_sim.set_references([tensor(data.astronaut())], "person")
    return face_sim


def test_the_same_face_scores_higher_than_a_different_face(metric: FaceSimilarity) -> None:
    astronaut = data.astronaut()
    shifted = np.roll(astronaut, (24, -18), axis=(0, 1))
    cropped = cv2.resize(astronaut[16:464, 48:496], (512, 512), interpolation=cv2.INTER_AREA)
    same = score(metric, [shifted, cropped])
    other = score(metric, [lfw_face(0), lfw_face(1)])
    assert same["face_sim_missing"] == other["face_sim_missing"] == 0
    assert same["face_sim"] > other["face_sim"] + 0.05
    assert same["face_sim"] < 1.0  # a shifted, rescaled crop is not the reference itself


def test_a_faceless_image_is_counted_missing_not_scored(metric: FaceSimilarity) -> None:
    brick = np.repeat(data.brick()[..., None], 3, axis=2)
    shifted = np.roll(data.astronaut(), (24, -18), axis=(0, 1))
    alone = score(metric, [shifted])
    with_brick = score(metric, [shifted, brick])
    assert with_brick == {"face_sim": alone["face_sim"], "face_sim_missing": 1.0}
    only_brick = score(metric, [brick])
    assert math.isnan(only_brick["face_sim"]) and only_brick["face_sim_missing"] == 1.0


class WholeImageDetector:
    """One face covering the image unless the image is black."""

    name = "whole-image"

    def detect(self, image: np.ndarray) -> list[Face]:
        height, width = image.shape[:2]
        return [Face((0, 0, width, height), 1.0)] if image.max() > 0 else []

    def definition(self) -> dict[str, str]:
        return {"detector": self.name}


class TableEmbedder:
    """Crop -> table[id], the id read from the centre pixel's red value (id * 10)."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table

    def __call__(self, faces: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.table[faces[:, 56, 56, 0] // 10])


def id_image(identity: int) -> torch.Tensor:
    """A 32 x 32 image whose red value is ``identity`` * 10; 0 is black (no face)."""
    image = torch.zeros(3, 32, 32)
    image[0] = identity * 10 / 255
    image[1] = 0.5 if identity else 0.0
    return image


def test_the_cosine_is_the_mean_over_all_generated_x_reference_pairs() -> None:
    table = np.random.default_rng(0).normal(size=(8, 16))
    metric = FaceSimilarity(
        "unused", scale=100.0, detector=WholeImageDetector(), embedder=TableEmbedder(table)
    )
    references, batches = [1, 2, 3], [[4, 0, 5], [6, 7]]  # id 0: a faceless image
    metric.set_references([id_image(i) for i in references], "person")
    for batch in batches:
        metric.update(torch.stack([id_image(i) for i in batch]))
    values = metric.compute()

    def cosine(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    generated = [i for batch in batches for i in batch if i != 0]
    pairs = [cosine(table[g], table[r]) for g in generated for r in references]
    assert float(values["face_sim"]) == pytest.approx(100.0 * sum(pairs) / len(pairs), abs=1e-9)
    assert int(values["face_sim_missing"]) == 1
    reference_mean = table[references].mean(0)  # the other convention gives another number
    other = np.mean([cosine(table[g], reference_mean) for g in generated])
    assert abs(float(values["face_sim"]) - 100.0 * other) > 1e-3
    assert metric.definition()["formula"].startswith("mean over all generated x reference pairs")


def test_references_without_any_face_are_an_error_and_some_are_counted() -> None:
    table = np.eye(8)
    metric = FaceSimilarity("unused", detector=WholeImageDetector(), embedder=TableEmbedder(table))
    with pytest.raises(ValueError, match="no face was found in any of the 2 reference photos"):
        metric.set_references([id_image(0), id_image(0)], "person")
    metric.set_references([id_image(0), id_image(3)], "person")
    assert metric.definition()["references_without_face"] == 1


def test_a_missing_face_model_is_one_error_naming_the_fixes(tmp_path: Path) -> None:
    with pytest.raises(EvalModelNotFoundError, match="no such file or folder") as error:
        FaceSimilarity(str(tmp_path / "buffalo_l"), detector="cascade")
    message = str(error.value)
    assert "\n" not in message
    assert "evaluation.metrics.face_model" in message and "tiny-arcface" in message


def test_an_onnx_model_without_onnxruntime_names_the_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails even where installed
    (tmp_path / "w600k_r50.onnx").write_bytes(b"")
    with pytest.raises(EvalModelNotFoundError, match="pip install onnxruntime"):
        load_face_model(str(tmp_path))


def test_arcface_torch_weights_load_with_their_shape_read_from_the_file(tmp_path: Path) -> None:
    """A DataParallel-saved .pth (``module.`` keys) of another depth loads to the same network."""
    torch.manual_seed(0)
    model = IResNet((2, 1, 1, 1), (8, 8, 16, 16), 24).eval()
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "backbone.pth")
    loaded = IResNet.from_pretrained(tmp_path / "backbone.pth")
    assert (loaded.depths, loaded.widths, loaded.embedding_size) == (
        (2, 1, 1, 1),
        (8, 8, 16, 16),
        24,
    )
    faces = torch.rand(2, 3, 112, 112) * 2 - 1
    torch.testing.assert_close(loaded(faces), model(faces), rtol=0, atol=0)


def test_tiny_arcface_is_built_offline_and_loads_by_name() -> None:
    assert tiny_arcface.TINY_ARCFACE_NAME == TINY_ARCFACE_NAME
    folder = tiny_arcface.ensure_tiny_arcface()
    assert (folder / "model.safetensors").exists()
    embedder = load_face_model(TINY_ARCFACE_NAME)
    features = embedder(np.zeros((3, 112, 112, 3), dtype=np.uint8))
    assert features.shape == (3, 32) and torch.isfinite(features).all()

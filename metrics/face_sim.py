"""Face-Sim: identity fidelity, ArcFace cosine between generated and reference faces.

ACCORD's Table 4 (IP-Adapter on FFHQ) and IP-Adapter's FaceID evaluation: detect the face in
every image, align it to 112 x 112 (insightface's 5-point ``norm_crop`` when the detector gives
landmarks, a square crop with margin otherwise: `metrics.faces`), embed it with an ArcFace
network and report the mean cosine over ALL generated x reference pairs (not against the mean
reference embedding), as CLIP-I and DINO-I average. The largest face of an image is its face.

A generated image in which no face is found is not dropped silently: it is left out of the mean
(there is nothing to compare) and counted in ``face_sim_missing``, reported next to
``face_sim``; ``face_sim`` is NaN when no generated image had a face. References without a face
are counted in the definition; none with a face is an error.

The ArcFace model (``model``): insightface's model pack folder (``buffalo_l``'s
``w600k_r50.onnx``, run through onnxruntime, an optional dependency), one ArcFace ``.onnx``,
arcface_torch IResNet weights (``.pth`` / ``.safetensors``, `pretrained.iresnet`), or
``tiny-arcface`` for tests. Both backends take RGB faces scaled to (x - 127.5) / 127.5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metrics.base import EvalMetric
from metrics.faces import (
    ALIGNED_SIZE,
    DETECTION_PATTERNS,
    ONNXRUNTIME_HINT,
    CascadeFaceDetector,
    FaceDetector,
    InsightFaceDetector,
    align_face,
    find_model_file,
    largest_face,
    onnx_session,
)
from metrics.images import to_uint8
from metrics.settings import DEFAULT_FACE_MODEL
from pretrained.eval_models import EvalModelNotFoundError
from pretrained.iresnet import IResNet

FACE_MODEL_OPTION = "evaluation.metrics.face_model"
TINY_ARCFACE_NAME = "tiny-arcface"  # pretrained/tiny_arcface.py, built on first use
RECOGNITION_PATTERNS = (
    "w600k_*.onnx",
    "glint*.onnx",
    "*arcface*.onnx",
    "*r100*.onnx",
    "*r50*.onnx",
)
_LOADED: dict[str, Any] = {}


class FaceEmbedder(Protocol):
    """Aligned faces, RGB uint8 (N, 112, 112, 3) -> embeddings (N, D)."""

    def __call__(self, faces: np.ndarray) -> torch.Tensor: ...


def arcface_input(faces: np.ndarray) -> np.ndarray:
    """RGB uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [-1, 1]: (x - 127.5) / 127.5."""
    return ((faces.astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2).copy()


class OnnxArcFace:
    """insightface's recognition ONNX (e.g. ``w600k_r50.onnx``) through onnxruntime."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.session = onnx_session(file, "Face-Sim")
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, faces: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input_name: arcface_input(faces)})[0])


class TorchArcFace(nn.Module):
    """An `IResNet` (arcface_torch weights, or ``tiny-arcface``); a module, so it moves with the
    metric's ``.to(device)``."""

    def __init__(self, model: IResNet) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)

    def forward(self, faces: np.ndarray) -> torch.Tensor:
        device = next(self.model.parameters()).device
        with torch.no_grad():
            return self.model(torch.from_numpy(arcface_input(faces)).to(device)).cpu()


def model_not_found(name: str, reason: str) -> EvalModelNotFoundError:
    return EvalModelNotFoundError(
        f"Face-Sim needs the ArcFace model {name!r}, which cannot be loaded here ({reason}). "
        f"Set {FACE_MODEL_OPTION} to insightface's model pack folder (buffalo_l, with "
        f"w600k_r50.onnx and det_10g.onnx; fetch it once where there is network and copy it "
        f"here; it runs with `{ONNXRUNTIME_HINT}`), to one ArcFace .onnx file, to arcface_torch "
        f"IResNet weights (.pth / .safetensors), or, for a smoke test, to {TINY_ARCFACE_NAME}."
    )


def resolve_face_model(name: str) -> Path:
    """``tiny-arcface`` -> its cache folder (built once); anything else a path that exists."""
    if name == TINY_ARCFACE_NAME:
        from pretrained.tiny_arcface import ensure_tiny_arcface  # diffusers' cache helpers

        return ensure_tiny_arcface()
    path = Path(name).expanduser()
    if not path.exists():
        raise model_not_found(name, "no such file or folder")
    return path


def is_model_pack(path: Path) -> bool:
    return path.is_dir() and any(path.glob("*.onnx"))


def load_face_model(name: str) -> FaceEmbedder:
    """The ArcFace embedder ``name`` names (shared between metrics, loaded once)."""
    path = resolve_face_model(name)
    if str(path) in _LOADED:
        return _LOADED[str(path)]
    embedder: FaceEmbedder
    try:
        if is_model_pack(path) or path.suffix == ".onnx":
            file = find_model_file(path, RECOGNITION_PATTERNS, "Face-Sim", FACE_MODEL_OPTION)
            embedder = OnnxArcFace(file)
        else:
            embedder = TorchArcFace(IResNet.from_pretrained(path))
    except (OSError, ValueError, RuntimeError) as error:
        first = str(error).splitlines()[0] if str(error) else ""
        raise model_not_found(name, f"{type(error).__name__}: {first}") from error
    _LOADED[str(path)] = embedder
    return embedder


def load_detector_for(detector: str, model: str) -> FaceDetector:
    """``auto``: the SCRFD of ``model``'s insightface pack when it holds one, else the
    scikit-image cascade; ``cascade``; or an insightface pack folder / detection .onnx."""
    if detector == "cascade":
        return CascadeFaceDetector()
    if detector == "auto":
        path = Path(model).expanduser()
        if is_model_pack(path) and any(any(path.glob(p)) for p in DETECTION_PATTERNS):
            return InsightFaceDetector(path, option=FACE_MODEL_OPTION)
        return CascadeFaceDetector()
    return InsightFaceDetector(detector, option="evaluation.metrics.face_detector")


class FaceSimilarity(EvalMetric):
    """Mean ArcFace cosine over all generated x reference pairs of detected, aligned faces."""

    key = "face_sim"
    higher_is_better = True

    def __init__(
        self,
        model: str = DEFAULT_FACE_MODEL,
        scale: float = 1.0,
        detector: str | FaceDetector = "auto",
        embedder: FaceEmbedder | None = None,
        **kwargs: Any,
    ) -> None:
        """``detector``: ``auto``, ``cascade``, a pack / .onnx path, or a detector object;
        ``embedder`` (aligned faces -> features) replaces ArcFace; tests pass their own."""
        super().__init__(**kwargs)
        self.model_name, self.scale = model, scale
        self.embedder = embedder if embedder is not None else load_face_model(model)
        self.detector: FaceDetector = (
            load_detector_for(detector, model) if isinstance(detector, str) else detector
        )
        self.add_state("cosine_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pairs", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("missing", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.reference_features: torch.Tensor | None = None
        self.references_without_face = 0

    def faces(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[int]]:
        """Aligned crops (N, 112, 112, 3) of the images with a face, and which images those are."""
        crops, found = [], []
        for index, image in enumerate(images):
            face = largest_face(self.detector.detect(image))
            if face is not None:
                crops.append(align_face(image, face, ALIGNED_SIZE))
                found.append(index)
        empty = np.zeros((0, ALIGNED_SIZE, ALIGNED_SIZE, 3), dtype=np.uint8)
        return (np.stack(crops) if crops else empty), found

    def embed(self, crops: np.ndarray) -> torch.Tensor:
        return F.normalize(self.embedder(crops).double(), dim=-1)

    def set_references(self, images: list[torch.Tensor], class_word: str) -> None:
        if len(images) == 0:
            raise ValueError("face_sim needs at least one reference photo of the subject.")
        arrays = [to_hwc_uint8(image) for image in images]
        crops, found = self.faces(arrays)
        if not found:
            raise ValueError(
                f"face_sim: no face was found in any of the {len(images)} reference photos; "
                "give photos that show the subject's face (scripts/prepare_faces.py keeps the "
                "images with exactly one face)."
            )
        self.references_without_face = len(images) - len(found)
        self.reference_features = self.embed(crops)

    def update(self, images: torch.Tensor, prompts: list[str] | None = None) -> None:
        if self.reference_features is None:
            raise RuntimeError("face_sim: call set_references() before update().")
        crops, found = self.faces([to_hwc_uint8(image) for image in images])
        self.missing += len(images) - len(found)
        if not found:
            return
        generated = self.embed(crops).to(self.cosine_sum.device)
        reference = self.reference_features.to(generated.device)
        self.cosine_sum += (generated @ reference.T).sum()
        self.pairs += generated.shape[0] * reference.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        """``face_sim`` (NaN when no generated image had a face) and ``face_sim_missing``."""
        value = (
            self.scale * self.cosine_sum / self.pairs
            if self.pairs > 0
            else torch.tensor(float("nan"), dtype=torch.float64)
        )
        return {self.key: value, f"{self.key}_missing": self.missing.clone()}

    def definition(self) -> dict[str, Any]:
        backend = type(self.embedder).__name__
        return {
            "model": self.model_name,
            "features": f"ArcFace embedding ({backend}) of the largest detected face",
            "preprocessing": {
                "detector": self.detector.definition(),
                "alignment": "5-point similarity onto ArcFace's canonical 112x112 points "
                "(insightface norm_crop) when the detector gives landmarks, else a square crop "
                "of 1.4x the box's longer side resized to 112",
                "input": "RGB, (x - 127.5) / 127.5, images quantised to 8 bits first",
            },
            "formula": "mean over all generated x reference pairs of cos(f_gen, f_ref)",
            "missing": "generated images without a detected face are left out of the mean and "
            "counted in face_sim_missing",
            "references_without_face": self.references_without_face,
            "scale": self.scale,
        }


def to_hwc_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> RGB uint8 (H, W, 3), rounded as a saved PNG."""
    return to_uint8(image[None])[0].permute(1, 2, 0).cpu().numpy()

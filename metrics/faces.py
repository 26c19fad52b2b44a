"""Face detection and alignment for Face-Sim and for filtering face datasets (FFHQ).

Two detectors, one interface (``detect(image) -> list[Face]``, an RGB uint8 (H, W, 3) array):

- `InsightFaceDetector`: insightface's SCRFD detection ONNX (``det_10g.onnx`` of the
  ``buffalo_l`` model pack, which ACCORD and IP-Adapter used) run through onnxruntime, an
  optional dependency. It gives a box, a score and 5 landmarks (eyes, nose, mouth corners) per
  face, so the face is aligned as insightface aligns it: the least-squares similarity transform
  of the 5 points onto ArcFace's canonical 112 x 112 points (`ARCFACE_POINTS`).
- `CascadeFaceDetector`: scikit-image's LBP frontal-face cascade, whose weights ship inside
  scikit-image, so detection runs offline with nothing downloaded. It gives boxes only; the
  face is then a square crop around the box with a margin, resized to 112.

This lives in ``metrics/`` (not ``preparation/``) because Face-Sim needs it and a metric may not
import a later room; `preparation.faces` reuses it to filter folders.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from pretrained.eval_models import EvalModelNotFoundError

ALIGNED_SIZE = 112
# insightface's ``arcface_dst`` (utils/face_align.py): left eye, right eye, nose tip, left and
# right mouth corner, in pixels of the 112 x 112 crop every ArcFace model is trained on.
ARCFACE_POINTS = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]
)
ONNXRUNTIME_HINT = "pip install onnxruntime (or: pip install -e .[faces])"


@dataclass(frozen=True)
class Face:
    """One detected face in pixels of the image it was found in.

    Attributes:
        box: x1, y1, x2, y2.
        score: the detector's confidence (SCRFD's probability; the cascade's number of raw
            windows that agree on this face).
        landmarks: (5, 2) x, y of eyes, nose, mouth corners, or None (box-only detectors).
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray | None = None

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(x2 - x1, 0.0) * max(y2 - y1, 0.0)


class FaceDetector(Protocol):
    """Finds faces in an RGB uint8 (H, W, 3) image."""

    name: str

    def detect(self, image: np.ndarray) -> list[Face]: ...

    def definition(self) -> dict[str, Any]: ...


def box_overlaps(box: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and intersection over the smaller area of ``box`` (4,) with each of ``boxes`` (N, 4)."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    iou = inter / np.maximum(area + areas - inter, 1e-12)
    smaller = inter / np.maximum(np.minimum(area, areas), 1e-12)
    return iou, smaller


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy non-maximum suppression: indices kept, best score first."""
    order = list(np.argsort(-scores, kind="stable"))
    keep: list[int] = []
    while order:
        best = order.pop(0)
        keep.append(int(best))
        if order:
            iou, _ = box_overlaps(boxes[best], boxes[order])
            order = [i for i, o in zip(order, iou) if o <= iou_threshold]
    return keep


def group_windows(
    windows: np.ndarray, iou_threshold: float = 0.3, contained: float = 0.5
) -> list[tuple[np.ndarray, int]]:
    """A cascade's raw windows (N, 4) -> one (mean box, support) per face, most support first.

    A cascade fires on many shifted / scaled windows around a face and on few around a false
    hit, so each window's support is the number of windows overlapping it (IoU above
    ``iou_threshold``); the best-supported window and its overlapping windows become one face,
    greedily. A group whose box lies mostly inside an already taken face (intersection over the
    smaller box above ``contained``: an eye or a mouth fired on its own) joins that face.
    """
    if len(windows) == 0:
        return []
    support = np.array([(box_overlaps(w, windows)[0] > iou_threshold).sum() for w in windows])
    free = np.ones(len(windows), dtype=bool)
    faces: list[tuple[np.ndarray, int]] = []
    for index in np.argsort(-support, kind="stable"):
        if not free[index]:
            continue
        members = free & (box_overlaps(windows[index], windows)[0] > iou_threshold)
        free &= ~members
        box = windows[members].mean(axis=0)
        inside = [
            k
            for k, (taken, _) in enumerate(faces)
            if box_overlaps(box, taken[None])[1][0] > contained
        ]
        if inside:
            taken, count = faces[inside[0]]
            faces[inside[0]] = (taken, count + int(members.sum()))
        else:
            faces.append((box, int(members.sum())))
    return sorted(faces, key=lambda face: -face[1])


def to_gray(image: np.ndarray) -> np.ndarray:
    """RGB or grey uint8 / float image -> grey float in [0, 1] (ITU-R 601 luma, as skimage)."""
    array = image.astype(np.float64)
    if image.dtype == np.uint8:
        array /= 255.0
    if array.ndim == 3:
        array = array[..., :3] @ np.array([0.2125, 0.7154, 0.0721])
    return array


class CascadeFaceDetector:
    """scikit-image's LBP frontal-face cascade with our grouping of its windows.

    The image is resized so its longer side is ``work_side`` (the cascade's cost grows with the
    pixel count; FFHQ's and generated faces are large), windows from ``min_face`` of the
    shorter side up to the whole image are scanned at scale steps of ``scale_factor``, and a
    face needs ``min_support`` agreeing windows: on scikit-image's sample photos real faces
    gather 7 or more, textures and objects at most 5.
    """

    name = "skimage-lbp-frontal-face"

    def __init__(
        self,
        work_side: int = 256,
        min_face: float = 0.125,
        scale_factor: float = 1.1,
        min_support: int = 6,
    ) -> None:
        from skimage.data import lbp_frontal_face_cascade_filename
        from skimage.feature import Cascade

        self.cascade = Cascade(lbp_frontal_face_cascade_filename())
        self.work_side, self.min_face = work_side, min_face
        self.scale_factor, self.min_support = scale_factor, min_support

    def detect(self, image: np.ndarray) -> list[Face]:
        gray = to_gray(image)
        height, width = gray.shape
        scale = self.work_side / max(height, width)
        size = (max(round(width * scale), 1), max(round(height * scale), 1))
        small = cv2.resize(
            gray, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        )
        side = max(int(self.min_face * min(small.shape)), 24)  # the cascade's window is 24 px
        if side > min(small.shape):
            return []
        # min_neighbor_number=1 and an unreachable merge score: every raw window comes back,
        # grouped by `group_windows` (skimage's own grouping does not report the support).
        raw = self.cascade.detect_multi_scale(
            img=small,
            scale_factor=self.scale_factor,
            step_ratio=1,
            min_size=(side, side),
            max_size=small.shape,
            min_neighbor_number=1,
            intersection_score_threshold=2.0,
        )
        windows = np.array(
            [[d["c"], d["r"], d["c"] + d["width"], d["r"] + d["height"]] for d in raw], dtype=float
        ).reshape(-1, 4)
        faces = []
        for box, support in group_windows(windows):
            if support >= self.min_support:
                x1, y1, x2, y2 = (box / scale).tolist()
                faces.append(Face((x1, y1, x2, y2), float(support)))
        return faces

    def definition(self) -> dict[str, Any]:
        return {
            "detector": self.name,
            "work_side": self.work_side,
            "min_face_fraction": self.min_face,
            "scale_factor": self.scale_factor,
            "min_support": self.min_support,
            "landmarks": "none: square crop around the box",
        }


def import_onnxruntime(what: str) -> Any:
    """onnxruntime, or an `EvalModelNotFoundError` (an OSError: the commands' ``run_command``
    prints it as one ``error:`` line) naming the package to install."""
    try:
        return importlib.import_module("onnxruntime")
    except ImportError:
        raise EvalModelNotFoundError(
            f"{what} runs insightface's ONNX models through onnxruntime, which is not "
            f"installed; {ONNXRUNTIME_HINT}."
        ) from None


def onnx_session(file: Path, what: str) -> Any:
    """A CPU (or CUDA when onnxruntime has it) inference session of ``file``."""
    ort = import_onnxruntime(what)
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return ort.InferenceSession(str(file), providers=providers)


def find_model_file(root: str | Path, patterns: tuple[str, ...], what: str, option: str) -> Path:
    """An .onnx file given directly, or the first file of model pack folder ``root`` matching
    ``patterns`` (insightface's names: ``det_10g.onnx``, ``w600k_r50.onnx``)."""
    path = Path(root).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(
            f"{what}: {option} {str(path)!r} does not exist; point it at an insightface model "
            "pack folder (e.g. ~/.insightface/models/buffalo_l, holding det_10g.onnx and "
            "w600k_r50.onnx) or at one .onnx file."
        )
    for pattern in patterns:
        found = sorted(path.glob(pattern))
        if found:
            return found[0]
    present = sorted(p.name for p in path.glob("*.onnx"))
    raise FileNotFoundError(
        f"{what}: model pack {str(path)!r} holds no {' / '.join(patterns)} (it has "
        f"{present or 'no .onnx files'}); use insightface's buffalo_l pack or name the file."
    )


DETECTION_PATTERNS = ("det_*.onnx", "scrfd*.onnx")


class InsightFaceDetector:
    """insightface's SCRFD (boxes + 5 landmarks) through onnxruntime, decoded as insightface's
    ``model_zoo/scrfd.py`` does: letterbox into ``input_size`` (image at the top left), inputs
    (x - 127.5) / 128 in RGB, anchor-free distances per stride, score threshold, NMS."""

    name = "insightface-scrfd"

    def __init__(
        self,
        root: str | Path,
        input_size: int = 640,
        threshold: float = 0.5,
        nms_threshold: float = 0.4,
        option: str = "--insightface-root",
    ) -> None:
        self.file = find_model_file(root, DETECTION_PATTERNS, "face detection", option)
        self.session = onnx_session(self.file, "face detection")
        self.input_name = self.session.get_inputs()[0].name
        outputs = len(self.session.get_outputs())
        if outputs not in (6, 9, 10, 15):
            raise ValueError(
                f"{self.file} has {outputs} outputs, not an SCRFD detector's 6, 9, 10 or 15; "
                "name insightface's det_*.onnx."
            )
        self.levels = 3 if outputs in (6, 9) else 5
        self.strides = [8, 16, 32, 64, 128][: self.levels]
        self.anchors = 2 if self.levels == 3 else 1
        self.has_landmarks = outputs in (9, 15)
        self.input_size, self.threshold, self.nms_threshold = input_size, threshold, nms_threshold

    def detect(self, image: np.ndarray) -> list[Face]:
        rgb = np.ascontiguousarray(image if image.ndim == 3 else np.stack([image] * 3, -1))
        height, width = rgb.shape[:2]
        side = self.input_size
        scale = side / max(height, width)
        new = (max(int(width * scale), 1), max(int(height * scale), 1))
        canvas = np.zeros((side, side, 3), dtype=np.float32)
        canvas[: new[1], : new[0]] = cv2.resize(rgb, new).astype(np.float32)
        blob = ((canvas - 127.5) / 128.0).transpose(2, 0, 1)[None]
        outputs = self.session.run(None, {self.input_name: blob})
        boxes, scores, points = [], [], []
        for level, stride in enumerate(self.strides):
            level_scores = outputs[level].reshape(-1)
            distances = outputs[level + self.levels].reshape(-1, 4) * stride
            cells = side // stride
            grid = np.stack(np.mgrid[:cells, :cells][::-1], axis=-1).reshape(-1, 2) * stride
            centres = np.repeat(grid.astype(np.float32), self.anchors, axis=0)
            hit = level_scores >= self.threshold
            centre = centres[hit]
            boxes.append(
                np.concatenate([centre - distances[hit, :2], centre + distances[hit, 2:]], 1)
            )
            scores.append(level_scores[hit])
            if self.has_landmarks:
                offsets = outputs[level + 2 * self.levels].reshape(-1, 10)[hit] * stride
                points.append(centre[:, None, :] + offsets.reshape(-1, 5, 2))
        all_boxes = np.concatenate(boxes) / scale
        all_scores = np.concatenate(scores)
        all_points = np.concatenate(points) / scale if self.has_landmarks else None
        faces = []
        for index in nms(all_boxes, all_scores, self.nms_threshold):
            x1, y1, x2, y2 = all_boxes[index].tolist()
            landmarks = None if all_points is None else all_points[index].astype(np.float64)
            faces.append(Face((x1, y1, x2, y2), float(all_scores[index]), landmarks))
        return faces

    def definition(self) -> dict[str, Any]:
        return {
            "detector": self.name,
            "model_file": self.file.name,
            "input_size": self.input_size,
            "threshold": self.threshold,
            "nms_iou": self.nms_threshold,
            "landmarks": "5 points" if self.has_landmarks else "none: square crop around the box",
        }


def load_face_detector(root: str | Path | None, option: str = "--insightface-root") -> FaceDetector:
    """insightface's SCRFD from model pack (or .onnx) ``root``; None: the offline cascade."""
    if root is None:
        return CascadeFaceDetector()
    return InsightFaceDetector(root, option=option)


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2 x 3 similarity (rotation, uniform scale, shift) that maps ``source`` (N, 2) onto
    ``target`` (N, 2) in the least-squares sense: Umeyama (1991), as skimage's
    ``SimilarityTransform.estimate`` that insightface's ``norm_crop`` calls."""
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    mean_s, mean_t = source.mean(0), target.mean(0)
    centred_s, centred_t = source - mean_s, target - mean_t
    covariance = centred_t.T @ centred_s / len(source)
    u, sigma, vt = np.linalg.svd(covariance)
    signs = np.ones(2)
    if np.linalg.det(covariance) < 0:
        signs[-1] = -1  # the best rotation, not a reflection
    rotation = u @ np.diag(signs) @ vt
    scale = (sigma * signs).sum() / centred_s.var(0).sum()
    shift = mean_t - scale * rotation @ mean_s
    return np.concatenate([scale * rotation, shift[:, None]], axis=1)


def box_transform(box: tuple[float, float, float, float], size: int, margin: float) -> np.ndarray:
    """The 2 x 3 map of a square of side (1 + 2 margin) x the box's longer side, centred on the
    box, onto a ``size`` x ``size`` crop."""
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * (1 + 2 * margin)
    scale = size / side
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return np.array([[scale, 0, size / 2 - scale * cx], [0, scale, size / 2 - scale * cy]])


def align_face(
    image: np.ndarray, face: Face, size: int = ALIGNED_SIZE, margin: float = 0.2
) -> np.ndarray:
    """The face as an RGB uint8 (size, size, 3) crop: 5-point similarity onto ArcFace's canonical
    points when the detector gave landmarks (insightface's ``norm_crop``), else a square crop
    with ``margin`` around the box; pixels outside the image are black, as in ``norm_crop``."""
    rgb = image if image.ndim == 3 else np.stack([image] * 3, axis=-1)
    if face.landmarks is not None:
        matrix = similarity_transform(face.landmarks, ARCFACE_POINTS * size / ALIGNED_SIZE)
    else:
        matrix = box_transform(face.box, size, margin)
    return cv2.warpAffine(np.ascontiguousarray(rgb), matrix, (size, size), borderValue=0.0)


def largest_face(faces: list[Face]) -> Face | None:
    """The face a one-subject score reads when several are found: the largest box."""
    return max(faces, key=lambda face: face.area) if faces else None

"""The ``sam`` backend: SAM prompted by a Grounding-DINO box of the class word, and R-Aug's
regions from the same models (named parts, then SAM's own pieces of the concept by place).

Foreground: the best Grounding-DINO box for "<class word>." (the central 80% of the image
when there is no grounding model or no class word), then SAM's mask of best predicted IoU in
that box. Parts: each part name is looked for in the concept's box only, and a part is kept
only when its box scores at least `box_threshold` and its SAM mask, cut to the concept, has a
real size, so a region is never given a name nobody found. Places: SAM prompted at a grid of
points on the concept gives candidate pieces, kept disjoint and labelled by position.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from metrics.settings import DEFAULT_GROUNDING_DINO, DEFAULT_SAM  # Grounded-SAM's models
from preparation.segmentation.regions import (
    MAX_SHARE,
    MIN_SHARE,
    Region,
    SuperpixelRegions,
    position_of,
)
from pretrained.grounded_sam import (
    Box,
    best_boxes,
    best_masks,
    grounding_text,
    load_grounding_dino,
    load_sam,
    sam_masks,
)

SAM_OPTION, GROUNDING_OPTION = "augmentation.sam_model", "augmentation.grounding_model"
CENTRE_SHARE = 0.8  # the prompt box without a detector: this share of each side, centred
BOX_THRESHOLD = 0.3  # a part's box must score this (Grounded-SAM's usual 0.3 to 0.35)
GRID = 6  # point prompts per side of the concept's box for the regions by place
CROP_MARGIN = 0.1  # parts are searched in the concept's box grown by this share per side


def centre_box(size: tuple[int, int], share: float = CENTRE_SHARE) -> Box:
    """The centred box covering `share` of each side of an image of `size` (W, H)."""
    width, height = size
    dx, dy = width * (1 - share) / 2, height * (1 - share) / 2
    return [dx, dy, width - dx, height - dy]


def _bounds(mask: np.ndarray) -> tuple[int, int, int, int]:
    """top, bottom, left, right (exclusive) of a non-empty mask."""
    rows, cols = np.nonzero(mask)
    return int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1


def grid_points(concept: np.ndarray, per_side: int) -> list[list[float]]:
    """Centres of a per_side x per_side grid over the concept's box that fall on the concept."""
    top, bottom, left, right = _bounds(concept)
    ys = top + (np.arange(per_side) + 0.5) * (bottom - top) / per_side
    xs = left + (np.arange(per_side) + 0.5) * (right - left) / per_side
    return [[float(x), float(y)] for y in ys for x in xs if concept[int(y), int(x)]]


def disjoint_pieces(
    masks: np.ndarray, scores: np.ndarray, concept: np.ndarray, limit: int
) -> list[np.ndarray]:
    """At most `limit` disjoint pieces of the concept from SAM's masks (N, 3, H, W) and
    IoUs (N, 3): per prompt the most confident of its three masks that, cut to the concept,
    is a part (MIN_SHARE..MAX_SHARE of it); then the most confident first, each losing what
    an earlier piece took, dropped when too little is left. Largest first."""
    total = concept.sum()
    cut = masks & concept[None, None]
    shares = cut.sum(axis=(2, 3)) / total  # (N, 3)
    eligible = (shares >= MIN_SHARE) & (shares <= MAX_SHARE)
    candidates = []
    for n in np.flatnonzero(eligible.any(axis=1)):
        k = int(np.argmax(np.where(eligible[n], scores[n], -np.inf)))
        candidates.append((-float(scores[n, k]), int(n), cut[n, k]))
    candidates.sort(key=lambda c: c[:2])  # by confidence, then prompt order: deterministic
    taken, pieces = np.zeros_like(concept), []
    for _, _, mask in candidates:
        piece = mask & ~taken
        if piece.sum() >= MIN_SHARE * total:
            pieces.append(piece)
            taken |= piece
        if len(pieces) == limit:
            break
    return sorted(pieces, key=lambda m: -int(m.sum()))


class SamSegmenter:
    """``foreground``, ``find_parts`` and ``regions`` with SAM (+ Grounding-DINO).

    Args:
        sam_model / grounding_model: hub id, folder or tiny name (``tiny-sam``,
            ``tiny-grounding-dino``); grounding_model None prompts SAM with the image centre
            and finds no named parts.
        box_threshold: the least box score of a named part.
        grid: point prompts per side of the concept's box for ``regions``.
        device: where the models run.
    """

    def __init__(
        self,
        sam_model: str = DEFAULT_SAM,
        grounding_model: str | None = DEFAULT_GROUNDING_DINO,
        box_threshold: float = BOX_THRESHOLD,
        grid: int = GRID,
        device: str | torch.device = "cpu",
    ) -> None:
        self.sam, self.sam_processor = load_sam(sam_model, "CLIF segmentation (SAM)", SAM_OPTION)
        self.sam.to(device)
        self.detector = self.detector_processor = None
        if grounding_model:
            self.detector, self.detector_processor = load_grounding_dino(
                grounding_model, "CLIF segmentation (Grounding-DINO)", GROUNDING_OPTION
            )
            self.detector.to(device)
        self.box_threshold, self.grid = box_threshold, grid

    def prompt_box(self, image: Image.Image, class_word: str) -> Box:
        """Grounding-DINO's best box for the class word, or the centre box without one."""
        if self.detector is None or not class_word.strip():
            return centre_box(image.size)
        texts = [grounding_text(class_word)]
        boxes, _ = best_boxes(self.detector, self.detector_processor, [image], texts)
        return boxes[0].tolist()

    def foreground(self, image: Image.Image, class_word: str = "") -> np.ndarray:
        """(H, W) bool at the image's size; unchecked (the caller checks it)."""
        rgb = image.convert("RGB")
        box = self.prompt_box(rgb, class_word)
        ((masks, scores),) = sam_masks(self.sam, self.sam_processor, [rgb], boxes=[[box]])
        return best_masks(masks, scores)[0].numpy()

    def find_parts(
        self, image: Image.Image, concept: np.ndarray, part_names: list[str]
    ) -> list[Region]:
        """Named regions ("the ear of ...") for the parts found inside the concept."""
        concept = np.asarray(concept, bool)
        names = list(dict.fromkeys(n for n in part_names if n.strip()))
        if self.detector is None or not names or not concept.any():
            return []
        rgb = image.convert("RGB")
        top, bottom, left, right = _bounds(concept)
        my, mx = round(CROP_MARGIN * (bottom - top)), round(CROP_MARGIN * (right - left))
        top, left = max(0, top - my), max(0, left - mx)
        bottom, right = min(rgb.height, bottom + my), min(rgb.width, right + mx)
        crop = rgb.crop((left, top, right, bottom))
        found: list[tuple[str, Box]] = []
        for name in names:  # one text per call: no padding, and one crop's memory at a time
            boxes, scores = best_boxes(self.detector, self.detector_processor, [crop],
                                       [grounding_text(name)])  # fmt: skip
            if float(scores[0]) >= self.box_threshold:
                x0, y0, x1, y1 = boxes[0].tolist()
                found.append((name, [x0 + left, y0 + top, x1 + left, y1 + top]))
        if not found:
            return []
        boxes = [[box for _, box in found]]
        ((masks, scores),) = sam_masks(self.sam, self.sam_processor, [rgb], boxes=boxes)
        parts = best_masks(masks, scores).numpy() & concept[None]
        total = concept.sum()
        return [
            Region(mask, name, named=True)
            for (name, _), mask in zip(found, parts)
            if MIN_SHARE * total <= mask.sum() <= MAX_SHARE * total
        ]

    def regions(
        self, image: Image.Image, concept: np.ndarray, num_regions: int = 6
    ) -> list[Region]:
        """Up to `num_regions` disjoint pieces of the concept, labelled by place; superpixels
        when SAM gives no usable piece (a thin concept, or nothing of a part's size)."""
        concept = np.asarray(concept, bool)
        if not concept.any():
            return []
        rgb = image.convert("RGB")
        points = grid_points(concept, self.grid)
        pieces: list[np.ndarray] = []
        if points:
            ((masks, scores),) = sam_masks(self.sam, self.sam_processor, [rgb], points=[points])
            pieces = disjoint_pieces(masks.numpy(), scores.numpy(), concept, num_regions)
        if not pieces:
            return SuperpixelRegions().regions(rgb, concept, num_regions)
        return [Region(piece, position_of(piece, concept)) for piece in pieces]

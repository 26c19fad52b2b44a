"""Which metrics a test run computes, with which models: settings only, no model imports.

Kept free of transformers imports so that a config is checked (and ``fit`` starts) without
loading any evaluation code; `metrics.suite.build_metrics` turns the settings into metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ALL_METRICS = ("clip_t", "clip_i", "dino_i", "blip_t", "dino_fg", "gram_d")
FACE_METRICS = ("face_sim",)  # opt-in: they need an ArcFace model (an insightface pack)
DEFAULT_FACE_MODEL = "~/.insightface/models/buffalo_l"  # insightface's default pack location
FACE_DETECTORS = ("auto", "cascade")  # or a model-pack / det .onnx path
DEFAULT_CLIP = "openai/clip-vit-base-patch32"  # docs/DESIGN.md, "Evaluation": ViT-B/32
DEFAULT_DINO = "facebook/dino-vits16"  # DINO ViT-S/16
# BLIP-T backend -> (default model, max text tokens as in BLIP's / LAVIS' ITM code)
BLIP_BACKENDS = {
    "blip": ("Salesforce/blip-itm-large-coco", 35),
    "blip2": ("Salesforce/blip2-itm-vit-g", 32),
}
DEFAULT_GROUNDING_DINO = "IDEA-Research/grounding-dino-tiny"  # Grounded-SAM's Swin-T detector
DEFAULT_SAM = "facebook/sam-vit-huge"  # Grounded-SAM's SAM
MASK_SOURCE_NAMES = ("grounded_sam", "border_contrast")
DEFAULT_VGG = "timm/vgg19.tv_in1k"  # torchvision's ImageNet VGG-19, as safetensors on the hub


def check_choice(kind: str, value: str, choices: tuple[str, ...] | list[str]) -> str:
    if value not in choices:
        raise ValueError(f"Unknown {kind} {value!r}; choose one of {sorted(choices)}.")
    return value


@dataclass
class MetricSettings:
    """The metrics of ``test`` and their models (hub ids, local folders or ``tiny-*``).

    Attributes:
        metrics: keys to compute, from clip_t, clip_i, dino_i, blip_t, dino_fg, gram_d and
            face_sim (faces: not in the default list, it needs an ArcFace model).
        score_scale: multiplies the similarity scores (1: cosine, as ClassDiffusion and the MLM
            paper print them; 100: ACCORD's percent); Gram-D is never scaled.
        clip_model: CLIP of CLIP-T and CLIP-I (docs/DESIGN.md: ViT-B/32).
        dino_model: DINO ViT of DINO-I and DINO-FG (ViT-S/16).
        dino_resize / dino_crop: DINO (and VGG) preprocessing: shorter side, centre crop.
        blip_backend: ``blip`` (ITM-large-coco cosine) or ``blip2`` (BLIP-2 ITC).
        blip_model: None takes the backend's default.
        mask_source: DINO-FG's masks, ``grounded_sam`` or ``border_contrast`` (no weights).
        grounding_dino_model / sam_model: Grounded-SAM's two models.
        mask_background: value in [0, 1] of the masked-out pixels for DINO-FG.
        gram_model: VGG-19 weights for Gram-D (folder, weights file, or cached hub id).
        face_model: ArcFace of Face-Sim (an insightface pack, an .onnx, arcface_torch weights,
            or tiny-arcface).
        face_detector: auto (the pack's SCRFD, else scikit-image's LBP cascade), cascade, or a
            pack path.
    """

    metrics: list[str] = field(default_factory=lambda: list(ALL_METRICS))
    score_scale: float = 1.0
    clip_model: str = DEFAULT_CLIP
    dino_model: str = DEFAULT_DINO
    dino_resize: int = 256
    dino_crop: int = 224
    blip_backend: str = "blip"
    blip_model: str | None = None
    mask_source: str = "grounded_sam"
    grounding_dino_model: str = DEFAULT_GROUNDING_DINO
    sam_model: str = DEFAULT_SAM
    mask_background: float = 0.0
    gram_model: str = DEFAULT_VGG
    face_model: str = DEFAULT_FACE_MODEL
    face_detector: str = "auto"

    def __post_init__(self) -> None:
        """Name checks only (no model is loaded), so a typo fails when the config is read."""
        for key in self.metrics:
            check_choice("metric", key, ALL_METRICS + FACE_METRICS)
        check_choice("blip_backend", self.blip_backend, tuple(BLIP_BACKENDS))
        check_choice("mask_source", self.mask_source, MASK_SOURCE_NAMES)
        if not 0 < self.dino_crop <= self.dino_resize:
            raise ValueError(
                f"dino_crop ({self.dino_crop}) must be positive and at most dino_resize "
                f"({self.dino_resize})."
            )

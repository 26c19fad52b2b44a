"""Per-sample batch extras: data the DataModule builds only when the module asks for it
(datamodules/extras/base.py says how). Each extra is one file here, listed below: importing it
registers the keys it provides.
"""

from __future__ import annotations

from datamodules.extras import (  # noqa: F401  (each import registers its extras)
    captions,
    class_images,
    clif_pairs,
    context_prompts,
    reference_image,
    size_conditioning,
    subject_mask,
    superclass,
)
from datamodules.extras.base import SampleExtra, extra_for, known_keys

__all__ = ["SampleExtra", "extra_for", "known_keys"]

"""``test`` of a zero-shot baseline (IP-Adapter): new reference images in, images out.

A tuning baseline is scored against the photos it trained on. A zero-shot one is scored on
references it never saw (ACCORD's Table 4: held-out FFHQ faces): every evaluation prompt is
generated once per held-out reference, with that reference as the image condition, and each
image is scored against its own reference only (Face-Sim, CLIP-I, DINO-I, Gram-D) and its prompt
(CLIP-T, BLIP-T). The held-out references are a folder (``test_references``) or, without one,
the DataModule's held-out photos (``data.init_args.validation_split``).
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from metrics.images import pil_to_tensor
from preparation.photos import load_image_folder


class ZeroShotTestMixin:
    """test_step over held-out references, for a module with ``set_reference(image)``."""

    test_references: str | None

    def held_out_references(self, datamodule: Any) -> list[Image.Image]:
        """The references ``test`` generates from: the folder, else the held-out photos."""
        if self.test_references is not None:
            return load_image_folder(self.test_references)
        held_out = [datamodule.images[0][i] for i in datamodule.held_out_photos[0]]
        if not held_out:
            raise ValueError(
                f"{type(self).__name__} is zero-shot: test scores it on references it did not "
                "train on. Set model.init_args.test_references to a folder of them, or hold "
                "photos out with data.init_args.validation_split N."
            )
        return held_out

    def on_test_start(self) -> None:
        super().on_test_start()  # type: ignore[misc]
        self._references = self.held_out_references(self.trainer.datamodule)  # type: ignore[attr-defined]

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        class_word = self.concepts[0].class_word  # type: ignore[attr-defined]
        for reference in self._references:
            pixels = pil_to_tensor(reference)
            with torch.autocast(self.device.type, enabled=False):  # type: ignore[attr-defined]
                for metric in self._eval_metrics.values():  # type: ignore[attr-defined]
                    metric.set_references([pixels], class_word)
            self.set_reference(reference)  # type: ignore[attr-defined]
            try:
                super().test_step(batch, batch_idx)  # type: ignore[misc]
            finally:
                self.set_reference(None)  # type: ignore[attr-defined]

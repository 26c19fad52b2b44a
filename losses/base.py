"""The one small interface every regularizer implements.

A regularizer is an ``nn.Module`` with a ``name`` (its log key, ``train/loss/<name>``), a
``weight``, and the batch keys it ``requires``; ``forward(record, module)`` returns an unweighted
scalar. It reads only the step record and the base module's documented methods
(``encode_text``, ``predict_noise``, ...), never a baseline's internals, so that a new loss is
one new file in ``losses/`` plus a config line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from models.step_record import StepRecord

if TYPE_CHECKING:
    from models.base import PersonalizationModule


class Regularizer(nn.Module):
    """Base class: subclasses set ``name`` and ``requires`` and implement ``forward``."""

    name: ClassVar[str] = "regularizer"
    # Batch keys beyond the always-present ones (pixel_values, prompts, ...).
    requires: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = weight

    def prepare(self, module: PersonalizationModule) -> None:
        """Called once from the module's setup before training (the default needs nothing).

        Load what the loss needs here, so a bad option fails at start rather than mid-run.
        """

    def forward(self, record: StepRecord, module: PersonalizationModule) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement forward().")

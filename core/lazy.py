"""Package names that import their module on first use (PEP 562).

A package whose ``__init__`` imports every member makes each run pay for all of them: the
analysis callbacks pull in scikit-learn and matplotlib, and the baselines the losses. With
`lazy_names`, ``class_path: callbacks.SampleImages`` still resolves, but only what a run names
is imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_names(
    package: str, homes: dict[str, str], eager: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for `package`: each name in `homes` is read from the
    module it maps to when first asked for; `eager` is the package's own globals."""

    def getattr_(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(homes[name]), name)

    def dir_() -> list[str]:
        return sorted(set(eager) | set(homes))

    return getattr_, dir_

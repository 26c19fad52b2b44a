"""Shared test set-up: offline, a per-session tiny pipeline cache, small factories."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from helpers import DREAMBENCH, REPO_ROOT  # noqa: F401  (re-exported for tests)


@pytest.fixture(scope="session", autouse=True)
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test session builds its own tiny pipeline, so no stale cache can leak in."""
    cache = tmp_path_factory.mktemp("personalize-cache")
    previous = os.environ.get("PERSONALIZE_CACHE")
    os.environ["PERSONALIZE_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("PERSONALIZE_CACHE", None)
    else:
        os.environ["PERSONALIZE_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_sd_path(tiny_cache: Path) -> Path:
    """Folder of the saved tiny pipeline (diffusers layout)."""
    from models.tiny_pipeline import ensure_tiny_pipeline

    return ensure_tiny_pipeline()

"""Shared test set-up: offline, a per-session tiny pipeline cache, small factories."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Subprocesses the tests start (train.py runs, DDP workers) inherit one thread per process too.
os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("PERSONALIZE_TEST_THREADS", "1"))

from helpers import DREAMBENCH, REPO_ROOT  # noqa: F401  (re-exported for tests)

# One intra-op thread unless asked otherwise: on two busy cores, threads that wait on each other
# cost far more than they give on the tiny models.
torch.set_num_threads(int(os.environ.get("PERSONALIZE_TEST_THREADS", "1")))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files with heavy runs first: the workers take one file at a time (``--dist
    loadfile`` in setup.cfg, so a module's expensive fixture is built once), in this order; a
    long run started last would leave the other worker idle until it ends, started first the
    quick files fill in beside it."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def ctrl_c_handler_put_back(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test starts with the Ctrl-C handler the session began with; one that leaves a
    run's handler behind is named in a warning, so the leak is found where it happens."""
    import signal
    import warnings

    before = signal.getsignal(signal.SIGINT)
    yield
    if signal.getsignal(signal.SIGINT) is not before:
        warnings.warn(f"{request.node.nodeid} left a Ctrl-C handler behind", stacklevel=1)
        signal.signal(signal.SIGINT, before)


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
    from pretrained.tiny_sd import ensure_tiny_pipeline

    return ensure_tiny_pipeline()


@pytest.fixture(scope="session")
def psi_dir(tmp_path_factory: pytest.TempPathFactory, tiny_cache: Path) -> Path:
    """An exported (untrained, seeded) MLM contextualizer for tiny-sd: enough to test the
    ``mlm`` loss and the text path it shares."""
    from models.pretraining.contextualizer import ContextualizerPretraining

    folder = tmp_path_factory.mktemp("psi")
    torch.manual_seed(0)
    ContextualizerPretraining().export(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_sdxl_path(tiny_cache: Path) -> Path:
    """Folder of the saved tiny SDXL pipeline (diffusers layout)."""
    from pretrained.tiny_sdxl import ensure_tiny_sdxl

    return ensure_tiny_sdxl()


@pytest.fixture(scope="session")
def tiny_flux_path(tiny_cache: Path) -> Path:
    """Folder of the saved tiny FLUX.1-dev pipeline (diffusers layout)."""
    from pretrained.tiny_flux import ensure_tiny_flux

    return ensure_tiny_flux()

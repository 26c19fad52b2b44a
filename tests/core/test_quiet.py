"""The library notices silenced at start-up, and only those."""

from __future__ import annotations

import logging
import warnings

import pytest

from core.quiet import silence_library_noise


def test_the_litlogger_tip_is_dropped_and_other_lightning_lines_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    silence_library_noise()
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.info("💡 Tip: ... try installing [litlogger](https://pypi.org/project/litlogger/)")
        logger.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]


def test_the_leafspec_deprecation_is_ignored_but_other_future_warnings_are_not() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_library_noise()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning, 1)
        warnings.warn("something else changes", FutureWarning, 1)
    assert [str(w.message) for w in caught] == ["something else changes"]

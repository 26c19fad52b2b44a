"""Library notices that are not news to a user of this project, silenced at start-up.

Each printed on every command: transformers' "torchvision is missing, using the PIL image
processor" (the intended set-up here), Lightning's advertisement for its cloud logger, torch's
deprecation of ``isinstance(treespec, LeafSpec)`` (raised inside Lightning, not our code), and
Lightning's count of modules in eval mode (the frozen model is in eval mode on purpose).
"""

from __future__ import annotations

import logging
import warnings


class _DropAdvertisement(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


_ADVERTISEMENT = _DropAdvertisement()


def silence_library_noise() -> None:
    """Idempotent; call before the libraries are imported (transformers logs at import)."""
    logging.getLogger("transformers.utils.import_utils").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_ADVERTISEMENT)
    warnings.filterwarnings(
        "ignore", message=r".*isinstance\(treespec, LeafSpec\).*", category=FutureWarning
    )
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")

"""DataModule options that moved into a batch extra's own group, and where to: an older config
naming one fails to parse, and the error then says where the option lives now."""

from __future__ import annotations

import re

MOVED_OPTIONS = {
    "class_data_dir": "class_images.folder",
    "class_prompt": "class_images.prompt",
    "num_class_images": "class_images.count",
    "class_generation_steps": "class_images.generation_steps",
    "context_prompts_file": "context_prompts.file",
    "context_category": "context_prompts.category",
    "captioner": "captions.captioner",
}
_NOT_ACCEPTED = re.compile(r"Option '(\w+)' is not accepted")


def moved_option_hint(message: str) -> str:
    """``message`` with the option's new place added when it names one that moved."""
    found = _NOT_ACCEPTED.search(message)
    new = MOVED_OPTIONS.get(found.group(1)) if found else None
    if new is None:
        return message
    old = found.group(1)  # type: ignore[union-attr]  (new is set only when found)
    return (
        f"{message.rstrip('.')}: it moved to data.init_args.{new} (in YAML, "
        f"{new.split('.')[0]}: {{{new.split('.')[1]}: ...}} instead of {old}: ...)."
    )

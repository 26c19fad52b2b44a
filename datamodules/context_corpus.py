"""The contextualizer's pretraining corpus: context-rich prompts about ordinary subjects.

Algorithm 1 involves no concept token, so each template's "{}" is filled with a plain subject
of its category ("a photo of a {} wearing a red scarf" -> "... a fox wearing a red scarf"),
redrawn every epoch. Training uses the generated templates minus the held-out share;
validation the held-out ones (`prompts.context`), so ``val/loss/mlm`` is measured
on sentences psi never saw.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
from torch.utils.data import Dataset

from core.concept import ConceptSpec
from core.options import accepts_options_of
from datamodules.personalization import PersonalizationDataModule
from datamodules.sampler import ResumableDataLoader, batches_done, resumable_loader
from prompts import context_words as words
from prompts.context import (
    CATEGORIES,
    check_category,
    generate_context_templates,
    read_prompt_file,
    split_held_out,
)

SUBJECTS = {"living": words.LIVING_SUBJECTS, "object": words.OBJECT_SUBJECTS}


class CorpusDataset(Dataset):
    """(template, subjects) pairs; sample i fills its template with a subject seeded by i."""

    def __init__(self, items: list[tuple[str, tuple[str, ...]]], seed: int) -> None:
        if not items:
            raise ValueError("The prompt corpus is empty.")
        self.items, self.seed = items, seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        # The sampler adds epoch * len to the index, so each epoch draws other subjects.
        template, subjects = self.items[index % len(self.items)]
        subject = random.Random(f"{self.seed}/{index}").choice(subjects)
        return {"prompts": template.format(subject)}


@accepts_options_of(PersonalizationDataModule)
class ContextCorpusDataModule(L.LightningDataModule):
    """Batches of ``{"prompts": [...]}`` from the context-rich prompt set."""

    def __init__(
        self,
        prompts_per_category: int = 10_000,
        categories: list[str] | None = None,
        prompts_file: str | None = None,
        val_prompts: int = 512,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        **ignored: Any,
    ) -> None:
        """
        Args:
            prompts_per_category: distinct generated templates per category (paper: ~10^4).
            categories: which of ``living`` / ``object`` to generate (default both).
            prompts_file: a text file of templates ("{}" per line) instead of the generated set
                (the same fixed ~5% held out for validation).
            val_prompts: at most this many held-out prompts for validation.
            batch_size: prompts per step.
            seed: seeds the generated set, the subjects and the shuffle.
            ignored: the personalization DataModule's options, which shared overlays such as
                configs/tiny.yaml set (see `accepts_options_of`); a text corpus has no use for
                them.
        """
        super().__init__()
        if batch_size < 1 or prompts_per_category < 1 or val_prompts < 0:
            raise ValueError("batch_size >= 1, prompts_per_category >= 1, val_prompts >= 0.")
        chosen = [check_category(c) for c in (categories or list(CATEGORIES))]
        all_subjects = tuple(s for c in CATEGORIES for s in SUBJECTS[c])
        train: list[tuple[str, tuple[str, ...]]] = []
        held: list[tuple[str, tuple[str, ...]]] = []
        if prompts_file is not None:
            templates = read_prompt_file(prompts_file)
            fit, rest = split_held_out(templates)
            train += [(t, all_subjects) for t in fit]
            held += [(t, all_subjects) for t in rest]
        else:
            for category in chosen:
                fit, rest = split_held_out(
                    generate_context_templates(category, prompts_per_category, seed)
                )
                train += [(t, SUBJECTS[category]) for t in fit]
                held += [(t, SUBJECTS[category]) for t in rest]
        random.Random(seed).shuffle(held)  # a mix of both categories for a short validation
        self.train_items, self.val_items = train, held[:val_prompts]
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed

    @property
    def concepts(self) -> list[ConceptSpec]:
        """None to learn: train.py links this into the model, which ignores it."""
        return []

    def _loader(self, items: list[tuple[str, tuple[str, ...]]], shuffle: bool, skip: int) -> Any:
        return resumable_loader(
            CorpusDataset(items, self.seed),
            self.trainer,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            seed=self.seed,
            shuffle=shuffle,
            skip_batches=skip,
        )

    def train_dataloader(self) -> ResumableDataLoader:
        return self._loader(self.train_items, True, batches_done(self.trainer))

    def val_dataloader(self) -> Any:
        return self._loader(self.val_items, False, 0) if self.val_items else []

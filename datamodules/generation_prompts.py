"""What the test and predict stages generate: prompts x images, each with a fixed seed.

Image k of prompt p always gets seed ``seed + p * images_per_prompt + k``, whatever the batch
size or the number of processes, so two runs (or two methods) generate from the same noise.
Under DDP each rank takes every world-size-th item, with no padding: a duplicated image would
count twice in the scores.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler

from core.concept import ConceptSpec
from datamodules.prompt_sets import resolve_prompt_set


@dataclass(frozen=True)
class EvalPrompts:
    """The prompt set of ``test`` / ``predict`` (DataModule option ``eval_prompts``).

    Attributes:
        source: ``dreambench`` (DreamBench's 25 live-subject prompts for dogs and cats, its 25
            object prompts otherwise), ``dreambench_object``, ``dreambench_live``, or a text
            file with one prompt per line, "{}" marking the concept.
        images_per_prompt: DreamBench's protocol uses 4; ClassDiffusion samples 20.
        batch_size: images generated per step.
        seed: seed of the first image; see the module docstring.
        max_prompts: use only the first N prompts (quick looks; None = all).
    """

    source: str = "dreambench"
    images_per_prompt: int = 4
    batch_size: int = 4
    seed: int = 0
    max_prompts: int | None = None

    def __post_init__(self) -> None:
        if self.images_per_prompt < 1 or self.batch_size < 1:
            raise ValueError(
                "eval_prompts.images_per_prompt and eval_prompts.batch_size must be >= 1, got "
                f"{self.images_per_prompt} and {self.batch_size}."
            )
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ValueError(
                f"eval_prompts.max_prompts must be >= 1 or null, got {self.max_prompts}."
            )

    def templates(self, class_word: str) -> tuple[str, list[str]]:
        """(set name, templates); reads and checks a prompt file now, so errors come early."""
        name, templates = resolve_prompt_set(self.source, class_word)
        return name, templates[: self.max_prompts]


class GenerationItems(Dataset):
    """One item per image to generate: the prompt, the prompt to score, indices and seed."""

    def __init__(self, templates: list[str], concept: ConceptSpec, settings: EvalPrompts) -> None:
        per_prompt = settings.images_per_prompt
        self.items = [
            {
                "prompt": template.format(concept.phrase),
                # What CLIP-T / BLIP-T compare with: the concept token replaced by the class word.
                "score_prompt": template.format(concept.class_word),
                "prompt_index": p,
                "image_index": k,
                "seed": settings.seed + p * per_prompt + k,
            }
            for p, template in enumerate(templates)
            for k in range(per_prompt)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return dict(self.items[index])


class ShardSampler(DistributedSampler):
    """Rank r takes items r, r + world, ...; no shuffle, no padding (a `DistributedSampler`,
    so Lightning keeps it under DDP instead of wrapping it in a padding one)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.indices = list(range(rank, len(dataset), num_replicas))  # type: ignore[arg-type]
        self.num_samples = len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return self.num_samples


def generation_loader(
    items: GenerationItems, batch_size: int, num_replicas: int = 1, rank: int = 0
) -> DataLoader:
    """Batches of items in order; under DDP this rank's share."""
    sampler = ShardSampler(items, num_replicas=num_replicas, rank=rank)
    return DataLoader(items, batch_size=batch_size, sampler=sampler, num_workers=0)

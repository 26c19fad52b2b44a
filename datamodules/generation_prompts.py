"""What the test and predict stages generate: prompts x images, each with a fixed seed.

Image k of prompt p always gets seed ``seed + p * images_per_prompt + k``, whatever the batch
size or the number of processes, so two runs (or two methods) generate from the same noise.
Under DDP each rank takes every world-size-th item, with no padding: a duplicated image would
count twice in the scores. Items of a multi-concept set ("a {0} and a {1} on the beach", see
prompts/multi_concept.py) also say which concepts they name, so each concept's images are
scored against that concept's own photos.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler

from core.concept import ConceptSpec
from prompts.eval_sets import resolve_prompt_set
from prompts.multi_concept import check_concept_count, named_concepts, placeholder_indices


@dataclass(frozen=True)
class EvalPrompts:
    """The prompt set of ``test`` / ``predict`` (DataModule option ``eval_prompts``).

    Attributes:
        source: ``dreambench`` (DreamBench's 25 live-subject prompts for dogs and cats, its 25
            object prompts otherwise; for a style concept, ``style``: 30 contents rendered in
            the style, prompts/style.py), ``dreambench_object``, ``dreambench_live``, ``multi``
            (18 prompts composing the first two concepts, "a {0} and a {1} on the beach"), or a
            text file with one prompt per line, "{}" marking the concept (or "{0}", "{1}", ...
            the concepts of a multi-concept file). A run of several concepts still gets the
            first concept's single-concept set unless it chooses ``multi`` or such a file: the
            single-concept scores stay comparable with one-concept runs.
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

    def templates(
        self, class_word: str, num_concepts: int = 1, style: bool = False
    ) -> tuple[str, list[str]]:
        """(set name, templates); reads and checks a prompt file now, so errors come early
        (also a multi-concept set naming more concepts than the run's ``num_concepts``); a
        style concept's default set is ``style``."""
        name, templates = resolve_prompt_set(self.source, class_word, style)
        templates = templates[: self.max_prompts]
        check_concept_count(templates, num_concepts, repr(name))
        return name, templates


class GenerationItems(Dataset):
    """One item per image to generate: the prompt, the prompt to score, indices and seed.

    A single-concept template's "{}" is the first concept; a multi-concept template's "{i}" is
    concept i of ``concepts``, and its items add ``concepts``: the indices it names, space
    separated ("0 1"), as the manifest records them.
    """

    def __init__(
        self,
        templates: list[str],
        concepts: ConceptSpec | Sequence[ConceptSpec],
        settings: EvalPrompts,
    ) -> None:
        concepts = [concepts] if isinstance(concepts, ConceptSpec) else list(concepts)
        check_concept_count(templates, len(concepts), "given")
        multi = named_concepts(templates) is not None
        phrases = [c.phrase for c in concepts]
        # What CLIP-T / BLIP-T compare with: each concept token replaced by its class word.
        class_words = [c.class_word for c in concepts]
        per_prompt = settings.images_per_prompt
        self.items: list[dict[str, Any]] = []
        for p, template in enumerate(templates):
            named = {"concepts": " ".join(map(str, placeholder_indices(template)))} if multi else {}
            for k in range(per_prompt):
                self.items.append(
                    {
                        "prompt": template.format(*phrases),
                        "score_prompt": template.format(*class_words),
                        "prompt_index": p,
                        "image_index": k,
                        "seed": settings.seed + p * per_prompt + k,
                        **named,
                    }
                )

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

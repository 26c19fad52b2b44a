"""Does the concept swallow its context? sim1 and sim2 (diverse-context paper, Table 1).

For a prompt with the concept and a context word ("a <v1> dog on the beach"; context "beach"),
on the text encoder's output features (the states the UNet attends to, concept tokens injected):

- ``text/sim1`` = cos(c_*, c_b): the concept token's feature against the context token's in the
  same prompt. Concept overfitting pulls the context toward the concept: high sim1.
- ``text/sim2`` = cos(c_b, c^_b): the context token's feature with the concept against the same
  token in the prompt without it, "a dog on the beach" (the concept token removed, the class
  word kept, so only the learned token differs). A context that keeps its meaning: high sim2.

Both are averaged over a fixed prompt set. A word or concept of several tokens is the mean of
its token features.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from callbacks.analysis import AnalysisCallback
from callbacks.context_prompts import DEFAULT_CONTEXT_PROMPTS, check_context_prompts
from callbacks.token_positions import concept_token_ids, find_positions, word_token_ids
from models.base import PersonalizationModule


def mean_at(states: torch.Tensor, positions: list[int]) -> torch.Tensor:
    """Mean of (L, D) states over token positions, shape (D,)."""
    return states[positions].float().mean(dim=0)


def sim1_sim2(
    with_concept: torch.Tensor,
    without_concept: torch.Tensor,
    concept_positions: list[int],
    context_positions_with: list[int],
    context_positions_without: list[int],
) -> tuple[float, float]:
    """(sim1, sim2) of one prompt pair from their (L, D) output states."""
    concept = mean_at(with_concept, concept_positions)
    context = mean_at(with_concept, context_positions_with)
    context_alone = mean_at(without_concept, context_positions_without)
    sim1 = F.cosine_similarity(concept, context, dim=0)
    sim2 = F.cosine_similarity(context, context_alone, dim=0)
    return float(sim1), float(sim2)


class TextSemantics(AnalysisCallback):
    """Logs ``text/sim1`` and ``text/sim2`` over a fixed prompt set; see the module docs."""

    name = "text"

    def __init__(
        self,
        every_n_steps: int = 100,
        prompts: dict[str, str] | None = None,
        concept_index: int = 0,
    ) -> None:
        """
        Args:
            every_n_steps: interval in optimizer steps (also at step 0 and at the end).
            prompts: template -> context word; "{}" takes the concept phrase ("<v1> dog").
            concept_index: which concept of a multi-concept module to follow.
        """
        super().__init__(every_n_steps)
        self.prompts = check_context_prompts(prompts or DEFAULT_CONTEXT_PROMPTS)
        self.concept_index = concept_index

    def measure(
        self, trainer: L.Trainer, module: PersonalizationModule, step: int
    ) -> dict[str, float]:
        concept = module.concepts[self.concept_index]
        templates = list(self.prompts)
        with_prompts = [t.format(concept.phrase) for t in templates]
        without_prompts = [t.format(concept.class_word) for t in templates]
        encoding = module.encode_text(with_prompts + without_prompts)
        states, ids = encoding.hidden_states, encoding.input_ids.tolist()
        concept_ids = concept_token_ids(module, self.concept_index)
        pairs = []
        for i, template in enumerate(templates):
            j = i + len(templates)
            word = self.prompts[template]
            word_ids = word_token_ids(module, word)
            pairs.append(
                sim1_sim2(
                    states[i],
                    states[j],
                    find_positions(ids[i], concept_ids, f"Concept {concept.token!r}"),
                    find_positions(ids[i], word_ids, f"Context word {word!r}"),
                    find_positions(ids[j], word_ids, f"Context word {word!r}"),
                )
            )
        sim1 = sum(p[0] for p in pairs) / len(pairs)
        sim2 = sum(p[1] for p in pairs) / len(pairs)
        return {f"{self.name}/sim1": sim1, f"{self.name}/sim2": sim2}

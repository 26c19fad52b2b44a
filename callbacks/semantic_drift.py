"""Semantic drift of the concept away from its class (ClassDiffusion Fig. 3a, Appendix D/E).

Features are the module's *current* text path: ``encode_text`` (concept tokens injected, so the
learned vectors and any trained text encoder count) pooled at the real end-of-text position, the
feature SPL works on, without the text projection.

- **Class centre**: the mean pooled feature of the adjective phrases ("a fluffy dog", ...), the
  centre of the class's cloud. (The paper measures distances to "the central point of the
  superclass" in its 2-D t-SNE plane; we measure in the full feature space, where t-SNE's
  distortion cannot change the answer, and only draw the plane.)
- ``drift/rank``: rank of the concept phrase "a <v1> dog" by Euclidean distance to the centre
  among the adjective phrases and itself (1 = closest; the paper's 26/71 before tuning, 67/71
  after plain Custom Diffusion).
- ``drift/cosine``: 1 - cos between "a photo of a <v1> dog" and "a photo of a dog", exactly the
  quantity SPL minimises.
- ``drift/tsne``: the t-SNE plane with the adjective phrases, the class phrase "a dog", the class
  centre (embedded along with the phrases, as the paper's Algorithm 1 does) and the concept.
- On FLUX the three again as ``drift/t5/...`` for T5's side (the states the transformer reads,
  averaged over each prompt's tokens); ``drift/...`` is CLIP ViT-L's, its pooled text.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.manifold import TSNE

from callbacks.analysis import AnalysisCallback
from callbacks.drift_phrases import ADJECTIVES, adjective_phrases, article
from callbacks.drift_plot import DriftPlot
from components.text_masking import trim_padding
from models.base import PersonalizationModule


def pooled_features(
    module: PersonalizationModule, prompts: Sequence[str], input_ids: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """(N, D) fp32 features of the prompts through the module's text path, by side: ``""``
    the end-of-text feature of the encoder whose ids these are (CLIP's), and on a family whose
    conditioning is another encoder's (FLUX's T5) ``"t5"``: the mean of its states over the
    prompt's own tokens (T5 has no end-of-text summary of the prompt).

    ``input_ids``: the prompts' ``module.tokenize`` ids if already at hand (they never change
    for a module). They are cut after the last end-of-text: the causal text encoder's feature
    there does not depend on the padding after it, and ~75 short phrases cost a few
    positions each instead of 77.
    """
    ids = module.tokenize(list(prompts)) if input_ids is None else input_ids
    eos = module.tokenizer.eos_token_id
    ids = trim_padding(ids, eos)
    encoding = module.encode_token_ids(ids)
    features = {"": encoding.pooled(eos).float()}
    if not encoding.states_follow_ids:
        tokenizers = [getattr(module, name) for name in module.family.tokenizer_names]
        attended = module.family.attended_ids(ids, tokenizers)
        own = (attended != tokenizers[-1].pad_token_id).float()[..., None]
        states = encoding.hidden_states.float()
        features["t5"] = (states * own).sum(dim=1) / own.sum(dim=1).clamp(min=1.0)
    return features


def class_centre(adjective_features: torch.Tensor) -> torch.Tensor:
    """The mean feature of the adjective phrases, shape (D,)."""
    return adjective_features.mean(dim=0)


def drift_rank(adjective_features: torch.Tensor, concept_feature: torch.Tensor) -> int:
    """Rank of the concept's distance to the class centre among all phrases (1 = closest;
    ties go to the concept, so an equal distance never counts against it)."""
    centre = class_centre(adjective_features)
    concept_distance = torch.linalg.vector_norm(concept_feature - centre)
    distances = torch.linalg.vector_norm(adjective_features - centre, dim=-1)
    return 1 + int((distances < concept_distance).sum())


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """1 - cos(a, b) of two feature vectors."""
    return float(1.0 - F.cosine_similarity(a.float(), b.float(), dim=-1))


def tsne_plane(
    features: torch.Tensor,
    perplexity: float,
    random_state: int,
    max_iter: int = 350,
    method: str = "barnes_hut",
) -> np.ndarray:
    """(N, 2) t-SNE embedding; PCA initialisation and a fixed seed make it repeatable.
    On the ~73 drift points, Barnes-Hut at 350 iterations ends within 5% of the KL divergence
    it reaches at sklearn's default 1000 (0.454 vs 0.432 on tiny-sd's features), below the
    exact gradient's at 400 (0.494), at under half the exact method's time."""
    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca",
        method=method,
        random_state=random_state,
        max_iter=max_iter,
    )
    return tsne.fit_transform(features.double().cpu().numpy())


class SemanticDrift(AnalysisCallback):
    """Logs ``drift/rank``, ``drift/cosine`` and the ``drift/tsne`` figure; see module docs."""

    name = "drift"

    def __init__(
        self,
        every_n_steps: int = 100,
        adjectives: list[str] | None = None,
        cosine_template: str = "a photo of a {}",
        perplexity: float = 15.0,
        random_state: int = 0,
        max_iter: int = 350,
        concept_index: int = 0,
    ) -> None:
        """
        Args:
            every_n_steps: interval in optimizer steps (also at step 0 and at the end).
            adjectives: the adjectives of the phrases (default: our 70 class-agnostic ones).
            cosine_template: prompt of ``drift/cosine``; "{}" takes "<v1> dog" and "dog".
            perplexity: t-SNE perplexity; 15 suits ~70 points (it must stay below their count).
            random_state: t-SNE seed.
            max_iter: t-SNE iterations (at least 250).
            concept_index: which concept of a multi-concept module to follow.
        """
        super().__init__(every_n_steps)
        self.adjectives = tuple(adjectives or ADJECTIVES)
        if len(set(self.adjectives)) < 10:
            raise ValueError("SemanticDrift needs at least 10 distinct adjectives (70 by default).")
        points = len(self.adjectives) + 3
        if not 0 < perplexity < points:
            raise ValueError(
                f"perplexity {perplexity} must be in (0, {points}), the number of t-SNE points; "
                "5 to 30 suits ~70 phrases."
            )
        if "{}" not in cosine_template:
            raise ValueError(f"cosine_template {cosine_template!r} needs a '{{}}' placeholder.")
        self.cosine_template = cosine_template
        self.perplexity = perplexity
        self.random_state = random_state
        self.max_iter = max_iter
        self.concept_index = concept_index
        # The phrases' token ids, tokenized once per module (tokenizing ~75 phrases costs
        # about as much as encoding them on a small model).
        self._token_ids: tuple[tuple[int, tuple[str, ...]], torch.Tensor] | None = None
        self._plot: DriftPlot | None = None  # built at the first measurement, then redrawn

    def measure(
        self, trainer: L.Trainer, module: PersonalizationModule, step: int
    ) -> dict[str, float]:
        concept = module.concepts[self.concept_index]
        adjective_prompts = adjective_phrases(concept.class_word, self.adjectives)
        concept_phrase = f"{article(concept.token)} {concept.phrase}"
        class_phrase = f"{article(concept.class_word)} {concept.class_word}"
        prompts = (
            *adjective_prompts,
            concept_phrase,
            class_phrase,
            self.cosine_template.format(concept.phrase),
            self.cosine_template.format(concept.class_word),
        )
        if self._token_ids is None or self._token_ids[0] != (id(module), prompts):
            self._token_ids = ((id(module), prompts), module.tokenize(list(prompts)))
        metrics: dict[str, float] = {}
        for side, features in pooled_features(module, prompts, self._token_ids[1]).items():
            name = f"{self.name}/{side}" if side else self.name
            phrases = (concept_phrase, class_phrase, concept.class_word)
            metrics.update(self._side(trainer, name, features, phrases, step))
        return metrics

    def _side(
        self,
        trainer: L.Trainer,
        name: str,
        features: torch.Tensor,
        phrases: tuple[str, str, str],
        step: int,
    ) -> dict[str, float]:
        """``<name>/rank``, ``<name>/cosine`` and the ``<name>/tsne`` figure of one side
        (``phrases``: the concept phrase, the class phrase, the class word)."""
        concept_phrase, class_phrase, class_word = phrases
        count = len(self.adjectives)
        adjective_features, concept_feature = features[:count], features[count]
        rank = drift_rank(adjective_features, concept_feature)
        cosine = cosine_distance(features[count + 2], features[count + 3])
        plane_input = torch.cat([features[: count + 2], class_centre(adjective_features)[None]])
        title = (
            f"step {step}: '{concept_phrase}' ranks {rank}/{count + 1} by distance to the class "
            f"centre\ncosine distance to '{self.cosine_template.format(class_word)}': "
            f"{cosine:.4f}"
        )
        plane = tsne_plane(plane_input, self.perplexity, self.random_state, self.max_iter)
        if self._plot is None:
            self._plot = DriftPlot(len(self.adjectives))
        image = self._plot.image(plane, self.adjectives, concept_phrase, class_phrase, title)
        self.log_image(trainer, f"{name}/tsne", image, step)
        return {f"{name}/rank": float(rank), f"{name}/cosine": cosine}

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
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from sklearn.manifold import TSNE

from callbacks.analysis import AnalysisCallback
from callbacks.drift_phrases import ADJECTIVES, adjective_phrases, article
from callbacks.render import figure_to_array_with_labels
from models.base import PersonalizationModule


def pooled_features(module: PersonalizationModule, prompts: Sequence[str]) -> torch.Tensor:
    """(N, D) fp32 end-of-text features of the prompts through the module's text path."""
    encoding = module.encode_text(list(prompts))
    return encoding.pooled(module.tokenizer.eos_token_id).float()


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
    features: torch.Tensor, perplexity: float, random_state: int, max_iter: int = 400
) -> np.ndarray:
    """(N, 2) t-SNE embedding; PCA initialisation and a fixed seed make it repeatable.
    For ~70 points the exact gradient is cheaper than Barnes-Hut's approximation and
    converges further: after 400 iterations its KL divergence is below Barnes-Hut's after
    500 (sklearn's 1000 doubles the cost)."""
    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca",
        method="exact",
        random_state=random_state,
        max_iter=max_iter,
    )
    return tsne.fit_transform(features.double().cpu().numpy())


def drift_figure(
    plane: np.ndarray,
    adjectives: Sequence[str],
    concept_phrase: str,
    class_phrase: str,
    title: str,
    label_adjectives: bool = True,
) -> Figure:
    """Adjective phrases (grey), class phrase, class centre and concept marked.

    Row order of ``plane``: adjectives, concept, class phrase, class centre. Without
    ``label_adjectives`` the grey points carry no text (`drift_image` writes it faster).
    """
    count = len(adjectives)
    # 540 px: the labels stay readable; a larger canvas only costs drawing and PNG time.
    figure = Figure(figsize=(6, 6), dpi=90)
    axes = figure.add_subplot()
    adjective_points = plane[:count]
    axes.scatter(*adjective_points.T, s=14, c="0.6", label="adjective + class phrases")
    if label_adjectives:
        for (x, y), adjective in zip(adjective_points, adjectives):
            axes.annotate(adjective, (x, y), fontsize=6, color="0.45", xytext=(2, 2),
                          textcoords="offset points")  # fmt: skip
    marks = (
        (plane[count], "*", "tab:red", 260, concept_phrase),
        (plane[count + 1], "s", "tab:blue", 90, class_phrase),
        (plane[count + 2], "X", "black", 140, "class centre (mean of adjective phrases)"),
    )
    for (x, y), marker, colour, size, label in marks:
        axes.scatter([x], [y], marker=marker, c=colour, s=size, label=label, zorder=3)
    # Fixed placements: legend loc="best" and tight_layout double the drawing time.
    axes.legend(loc="upper left", bbox_to_anchor=(0.0, -0.01), ncol=2, fontsize=8, frameon=False)
    axes.set_title(title, fontsize=10)
    axes.set_xticks([])
    axes.set_yticks([])
    figure.subplots_adjust(left=0.02, right=0.98, top=0.92, bottom=0.1)
    return figure


def drift_image(
    plane: np.ndarray,
    adjectives: Sequence[str],
    concept_phrase: str,
    class_phrase: str,
    title: str,
) -> np.ndarray:
    """`drift_figure` as an (H, W, 3) uint8 array, its ~70 labels written with PIL (the same
    picture at about a third of the drawing time)."""
    figure = drift_figure(plane, adjectives, concept_phrase, class_phrase, title, False)
    points = plane[: len(adjectives)]
    return figure_to_array_with_labels(figure, figure.axes[0], points, adjectives, fontsize=6)


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
        max_iter: int = 400,
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

    def measure(
        self, trainer: L.Trainer, module: PersonalizationModule, step: int
    ) -> dict[str, float]:
        concept = module.concepts[self.concept_index]
        adjective_prompts = adjective_phrases(concept.class_word, self.adjectives)
        concept_phrase = f"{article(concept.token)} {concept.phrase}"
        class_phrase = f"{article(concept.class_word)} {concept.class_word}"
        features = pooled_features(
            module,
            [
                *adjective_prompts,
                concept_phrase,
                class_phrase,
                self.cosine_template.format(concept.phrase),
                self.cosine_template.format(concept.class_word),
            ],
        )
        count = len(adjective_prompts)
        adjective_features, concept_feature = features[:count], features[count]
        rank = drift_rank(adjective_features, concept_feature)
        cosine = cosine_distance(features[count + 2], features[count + 3])
        plane_input = torch.cat([features[: count + 2], class_centre(adjective_features)[None]])
        plane = tsne_plane(plane_input, self.perplexity, self.random_state, self.max_iter)
        title = (
            f"step {step}: '{concept_phrase}' ranks {rank}/{count + 1} by distance to the class "
            f"centre\ncosine distance to '{self.cosine_template.format(concept.class_word)}': "
            f"{cosine:.4f}"
        )
        image = drift_image(plane, self.adjectives, concept_phrase, class_phrase, title)
        self.log_image(trainer, f"{self.name}/tsne", image, step)
        return {f"{self.name}/rank": float(rank), f"{self.name}/cosine": cosine}

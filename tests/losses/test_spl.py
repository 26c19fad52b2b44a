"""SPL (ClassDiffusion Eq. 10): the formula by hand, its gradient, and its effect on training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import optimizer_with_lr, parameters_reached, tiny_datamodule, tiny_trainer
from regularizer_fakes import (
    BOS,
    CONCEPT_ID,
    EOS,
    LENGTH,
    WIDTH,
    FakeModule,
    record_for,
    token_ids,
)

from losses.spl import SemanticPreservationLoss
from models import CustomDiffusion
from step.encoding import TextEncoding

PROMPTS = ["a photo of a <v1> dog", "a <v1> dog"]
SUPERCLASS = ["a photo of a dog", "a dog"]


def concept_ids() -> list[list[int]]:
    """Concept token at position 4 in the first prompt, 1 in the second; EOS at 6 -> 3 and 3."""
    first = [BOS, 20, 21, 22, CONCEPT_ID, EOS]
    second = [BOS, CONCEPT_ID, 23, EOS, EOS, EOS]
    return [first, second]


def setup_case(projection: torch.Tensor | None = None):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, LENGTH, WIDTH, generator=generator)
    encoding = TextEncoding(hidden, torch.tensor(concept_ids()))
    texts = {
        SUPERCLASS[0]: (token_ids(4), torch.randn(LENGTH, WIDTH, generator=generator)),
        SUPERCLASS[1]: (token_ids(1), torch.randn(LENGTH, WIDTH, generator=generator)),
    }
    batch = {
        "prompts": PROMPTS,
        "superclass_prompts": SUPERCLASS,
        "concept_index": torch.tensor([0, 0]),
    }
    module = FakeModule(texts, projection=projection)
    return module, record_for(batch, [10, 20], generator, encoding=encoding)


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    return 1.0 - float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("pool", ["eos", "concept"])
@pytest.mark.parametrize("with_projection", [False, True])
def test_matches_the_papers_formula(pool: str, with_projection: bool) -> None:
    projection = torch.randn(3, WIDTH, generator=torch.Generator().manual_seed(5))
    module, record = setup_case(projection if with_projection else None)
    loss = SemanticPreservationLoss(pool=pool, project=with_projection)(record, module)
    hidden = record.encoder_hidden_states.numpy()
    matrix = projection.numpy() if with_projection else np.eye(WIDTH)
    # The concept prompt pools at its first EOS (positions 5 and 3) or at <v1> (4 and 1); the
    # superclass prompt always at its first EOS (token_ids(n): position n + 1).
    concept_positions = {"eos": [5, 3], "concept": [4, 1]}[pool]
    superclass_positions = [5, 2]
    distances = []
    for i in range(2):
        a = matrix @ hidden[i, concept_positions[i]]
        sup = module.texts[SUPERCLASS[i]][1].numpy()[superclass_positions[i]]
        distances.append(cosine_distance(a, matrix @ sup))
    assert float(loss) == pytest.approx(float(np.mean(distances)), rel=1e-5)


def test_identical_features_give_zero() -> None:
    module, record = setup_case()
    for i, prompt in enumerate(SUPERCLASS):
        record.encoder_hidden_states[i] = module.texts[prompt][1]
        record.input_ids[i] = torch.tensor(module.texts[prompt][0])
    assert float(SemanticPreservationLoss()(record, module)) == pytest.approx(0.0, abs=1e-6)


def test_gradient_reaches_only_the_concept_token_when_the_text_encoder_is_frozen() -> None:
    datamodule = tiny_datamodule()
    datamodule.request(SemanticPreservationLoss.requires, "test")
    module = CustomDiffusion(concepts=datamodule.concepts)
    batch = next(iter(datamodule.train_dataloader()))
    record = module.denoise(batch, module.sample_draws(batch, 0))
    loss = SemanticPreservationLoss()(record, module)
    reached = parameters_reached(module, loss)
    assert reached == {"text_encoder.embeddings.token_embedding.vectors"}
    frozen = [p for n, p in module.text_encoder.named_parameters() if "vectors" not in n]
    assert frozen and not any(p.requires_grad for p in frozen)


def concept_class_distance(module: CustomDiffusion) -> float:
    """1 - cos of the EOS features of "a photo of a <v1> toy" and "a photo of a toy"."""
    with torch.no_grad():
        eos = module.tokenizer.eos_token_id
        a = module.encode_text(["a photo of a <v1> toy"]).pooled(eos)
        b = module.encode_text(["a photo of a toy"]).pooled(eos)
    return float(1 - F.cosine_similarity(a, b))


def test_training_with_spl_keeps_the_concept_closer_to_its_class(tmp_path: Path) -> None:
    distances = {}
    for name, regularizers in (("plain", []), ("spl", [SemanticPreservationLoss()])):
        datamodule = tiny_datamodule()
        module = CustomDiffusion(
            concepts=datamodule.concepts,
            regularizers=regularizers,
            optimizer=optimizer_with_lr(1e-2),
        )
        distances["start"] = concept_class_distance(module)
        tiny_trainer(tmp_path / name, max_steps=6).fit(module, datamodule=datamodule)
        distances[name] = concept_class_distance(module)
    print(distances)  # the note's figures: start, plain and spl distances
    assert distances["spl"] < distances["start"] < distances["plain"]

"""PersonalizationDataModule and InstanceDataset: batches, determinism, rescale, resume.

One file for the DataModule's options as a user sets them (~360 lines); the parts it builds on
have their own test files beside this one.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from helpers import DREAMBENCH

from core.concept import ConceptSpec
from datamodules.personalization import (
    ConceptData,
    InstanceDataset,
    PersonalizationDataModule,
)
from preparation.synthetic_concept import draw_synthetic_concept
from prompts.templates import FAR_AWAY_WORDS, SIMPLE_TEMPLATES, ZOOMED_IN_WORDS

GRAY = 127 / 127.5 - 1.0
KEYS = {"pixel_values", "prompts", "loss_mask", "concept_index", "cache_key", "sample_key"}


def _dm(**kwargs) -> PersonalizationDataModule:
    options = {"resolution": 32, "batch_size": 2, "repeats": 3, "seed": 0}
    options.update(kwargs)
    return PersonalizationDataModule(**options)


def _fake_trainer(
    ready: int, world_size: int = 1, rank: int = 0, restarting: bool = True
) -> SimpleNamespace:
    current = SimpleNamespace(ready=ready)
    epoch_loop = SimpleNamespace(
        batch_progress=SimpleNamespace(current=current), restarting=restarting
    )
    return SimpleNamespace(
        world_size=world_size,
        global_rank=rank,
        fit_loop=SimpleNamespace(epoch_loop=epoch_loop),
    )


def _same_sample(a: dict, b: dict) -> bool:
    return (
        torch.equal(a["pixel_values"], b["pixel_values"])
        and a["prompts"] == b["prompts"]
        and torch.equal(a["loss_mask"], b["loss_mask"])
        and a["concept_index"] == b["concept_index"]
        and a["cache_key"] == b["cache_key"]
    )


def _same_batch(a: dict, b: dict) -> bool:
    return (
        torch.equal(a["pixel_values"], b["pixel_values"])
        and a["prompts"] == b["prompts"]
        and torch.equal(a["loss_mask"], b["loss_mask"])
        and torch.equal(a["concept_index"], b["concept_index"])
        and a["cache_key"] == b["cache_key"]
    )


@pytest.fixture(scope="module")
def synthetic_dm() -> PersonalizationDataModule:
    return _dm()


# --------------------------------------------------------------------------- the synthetic toy


def test_synthetic_concept_spec(synthetic_dm: PersonalizationDataModule) -> None:
    assert synthetic_dm.concepts == [ConceptSpec("<v1>", "toy", None)]
    assert synthetic_dm.concepts[0].phrase == "<v1> toy"
    assert len(synthetic_dm.images) == 1 and len(synthetic_dm.images[0]) == 5


def test_concept_spec_carries_token_class_and_initializer() -> None:
    dm = _dm(concept_token="<sks>", class_word="robot", initializer_word="toy")
    assert dm.concepts == [ConceptSpec("<sks>", "robot", "toy")]
    prompts = [dm._dataset(True, 1)[i]["prompts"] for i in range(5)]
    assert all("<sks> robot" in p for p in prompts)


def test_train_batch_contents(synthetic_dm: PersonalizationDataModule) -> None:
    assert synthetic_dm.trainer is None
    loader = synthetic_dm.train_dataloader()
    assert len(loader.dataset) == 5 * 3
    assert len(loader) == math.ceil(15 / 2)
    batch = next(iter(loader))
    assert set(batch) == KEYS == synthetic_dm.provided_batch_keys()
    pixels = batch["pixel_values"]
    assert pixels.shape == (2, 3, 32, 32) and pixels.dtype == torch.float32
    assert pixels.min() >= -1.0 and pixels.max() <= 1.0
    assert pixels.std() > 0.05  # a real picture, not a constant
    assert isinstance(batch["prompts"], list) and len(batch["prompts"]) == 2
    for prompt in batch["prompts"]:
        assert isinstance(prompt, str) and "<v1> toy" in prompt
    assert batch["loss_mask"].shape == (2, 1, 32, 32)
    assert torch.equal(batch["loss_mask"], torch.ones(2, 1, 32, 32))
    assert batch["concept_index"].tolist() == [0, 0]
    assert len(batch["cache_key"]) == 2 and all(batch["cache_key"])


def test_an_epoch_visits_every_image_repeats_times(
    synthetic_dm: PersonalizationDataModule,
) -> None:
    keys = [k for batch in synthetic_dm.train_dataloader() for k in batch["cache_key"]]
    assert len(keys) == 15
    images = sorted(int(k.split("/")[1]) for k in keys)
    assert images == sorted(list(range(5)) * 3)


def test_prompts_use_the_templates(synthetic_dm: PersonalizationDataModule) -> None:
    dataset = synthetic_dm._dataset(True, 3)
    formatted = {t.format("<v1> toy") for t in SIMPLE_TEMPLATES}
    prompts = {dataset[i]["prompts"] for i in range(40)}
    assert prompts <= formatted
    assert len(prompts) > 5  # the templates vary


def test_flip_probability_zero_and_one() -> None:
    never = _dm(flip_probability=0.0)._dataset(True, 3)
    always = _dm(flip_probability=1.0)._dataset(True, 3)
    for i in range(6):
        a, b = never[i], always[i]
        assert a["cache_key"].endswith("/0") and b["cache_key"].endswith("/1")
        assert torch.equal(a["pixel_values"].flip(-1), b["pixel_values"])


def test_cache_key_identifies_the_pixels(
    synthetic_dm: PersonalizationDataModule,
) -> None:
    # Latent caching relies on it: one key, one exact image.
    dataset = synthetic_dm._dataset(True, 3)
    by_key: dict[str, torch.Tensor] = {}
    for i in range(60):
        sample = dataset[i]
        key = sample["cache_key"]
        assert key.count("/") == 2 and key.startswith("0/")
        if key in by_key:
            assert torch.equal(by_key[key], sample["pixel_values"]), key
        by_key[key] = sample["pixel_values"]
    assert len(by_key) > 5  # flipped and unflipped versions of several images
    values = list(by_key.values())
    for i in range(len(values)):  # different keys, different pixels
        assert all(
            not torch.equal(values[i], values[j]) for j in range(i + 1, len(values))
        )


def test_cache_key_empty_under_random_crop_and_rescale() -> None:
    for kwargs in ({"random_crop": True}, {"rescale_augmentation": True}):
        dataset = _dm(**kwargs)._dataset(True, 3)
        assert all(dataset[i]["cache_key"] == "" for i in range(15)), kwargs


def test_val_loader_is_unaugmented_and_ordered() -> None:
    dm = _dm(rescale_augmentation=True, random_crop=True, flip_probability=1.0)
    batches = list(dm.val_dataloader())
    keys = [k for b in batches for k in b["cache_key"]]
    assert keys == [f"0/{i}/0" for i in range(5)]
    prompts = [p for b in batches for p in b["prompts"]]
    assert prompts == [SIMPLE_TEMPLATES[0].format("<v1> toy")] * 5
    assert all(
        torch.equal(b["loss_mask"], torch.ones_like(b["loss_mask"])) for b in batches
    )


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_samples() -> None:
    a, b = _dm(seed=3)._dataset(True, 3), _dm(seed=3)._dataset(True, 3)
    for index in [0, 4, 14, 15 + 2, 3 * 15 + 7]:  # later epochs' global indices too
        assert _same_sample(a[index], b[index]), index


def test_same_seed_same_loader_order() -> None:
    a = [b["cache_key"] + b["prompts"] for b in _dm(seed=3).train_dataloader()]
    b = [b["cache_key"] + b["prompts"] for b in _dm(seed=3).train_dataloader()]
    assert a == b


def test_different_seed_different_order() -> None:
    a = list(_dm(seed=0).train_dataloader().sampler)
    b = list(_dm(seed=1).train_dataloader().sampler)
    assert sorted(a) == sorted(b) and a != b


def test_different_seed_different_augmentation(
    synthetic_dm: PersonalizationDataModule,
) -> None:
    # Same images, so only the per-sample augmentation seed differs.
    def dataset(seed: int) -> InstanceDataset:
        return InstanceDataset(
            synthetic_dm.images,
            synthetic_dm.concept_data,
            list(SIMPLE_TEMPLATES),
            32,
            random_crop=False,
            flip_probability=0.5,
            rescale_augmentation=False,
            repeats=3,
            seed=seed,
        )

    a, b = dataset(0), dataset(1)
    picks_a = [(a[i]["prompts"], a[i]["cache_key"]) for i in range(15)]
    picks_b = [(b[i]["prompts"], b[i]["cache_key"]) for i in range(15)]
    assert picks_a != picks_b
    # The image behind an index does not depend on the seed, only its augmentation.
    assert [k.split("/")[1] for _, k in picks_a] == [
        k.split("/")[1] for _, k in picks_b
    ]


def test_same_image_in_later_epoch_is_augmented_anew(synthetic_dm) -> None:
    dataset = synthetic_dm._dataset(True, 3)
    n = len(dataset)
    pairs = [(dataset[i], dataset[i + n]) for i in range(15)]
    assert all(a["cache_key"][:3] == b["cache_key"][:3] for a, b in pairs)  # same image
    assert any(a["prompts"] != b["prompts"] for a, b in pairs)


def test_synthetic_images_depend_on_seed_and_concept() -> None:
    dm = _dm(seed=4, additional_concepts=[ConceptData(token="<v2>")])
    first, second = dm.images
    assert len(first) == len(second) == 5
    assert all(a.tobytes() != b.tobytes() for a, b in zip(first, second))
    # The second concept is the toy drawn with seed + 1 (at least 64 px before resizing).
    expected = draw_synthetic_concept(5, 64, 5)
    assert [im.tobytes() for im in second] == [im.tobytes() for im in expected]
    assert [im.tobytes() for im in first] == [
        im.tobytes() for im in draw_synthetic_concept(5, 64, 4)
    ]


# --------------------------------------------------------------------------- rescale


def test_rescale_augmentation_samples() -> None:
    dataset = _dm(rescale_augmentation=True)._dataset(True, 20)
    formatted = {t.format("<v1> toy") for t in SIMPLE_TEMPLATES}
    counts = {"far": 0, "zoom": 0, "plain": 0}
    for i in range(60):
        sample = dataset[i]
        mask, pixels, prompt = (
            sample["loss_mask"],
            sample["pixel_values"],
            sample["prompts"],
        )
        assert mask.shape == (1, 32, 32) and mask.dtype == torch.float32
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert sample["cache_key"] == ""
        far = next((w for w in FAR_AWAY_WORDS if prompt.startswith(w)), None)
        zoom = next((w for w in ZOOMED_IN_WORDS if prompt.startswith(w)), None)
        rest = prompt[len(far or zoom or "") :]
        assert rest in formatted, prompt
        if zoom:
            counts["zoom"] += 1
            assert bool(mask.all()), prompt
            continue
        rows, cols = torch.nonzero(mask[0], as_tuple=True)
        side = int(rows.max() - rows.min() + 1)
        assert int(cols.max() - cols.min() + 1) == side and mask.sum() == side * side
        # All ones exactly when enlarged (zoom prefix) or shrunk to the full side.
        assert bool(mask.all()) == (side == 32)
        if far:
            counts["far"] += 1
            assert side < 0.6 * 32
        else:
            counts["plain"] += 1
            assert 0.6 * 32 <= side <= 32
        outside = pixels[:, mask[0] == 0]
        assert torch.allclose(outside, torch.full_like(outside, GRAY), atol=1e-6)
        assert not torch.allclose(
            pixels[:, mask[0] == 1], torch.tensor(GRAY), atol=0.02
        )
    assert all(counts.values()), counts


# --------------------------------------------------------------------------- several concepts


def test_two_concepts_with_dreambench_dog() -> None:
    dog = DREAMBENCH / "dog"
    if not dog.is_dir():
        pytest.skip(f"{dog} is missing")
    n_dog = len(
        [p for p in dog.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    )
    dm = _dm(
        repeats=2,
        additional_concepts=[
            ConceptData(token="<v2>", class_word="dog", instance_data_dir=str(dog))
        ],
    )
    assert dm.concepts == [ConceptSpec("<v1>", "toy"), ConceptSpec("<v2>", "dog")]
    dataset = dm._dataset(True, 2)
    assert len(dataset) == (5 + n_dog) * 2
    seen = set()
    for i in range(len(dataset)):
        sample = dataset[i]
        concept = sample["concept_index"]
        seen.add(concept)
        assert sample["cache_key"].startswith(f"{concept}/")
        if concept == 1:
            assert "<v2> dog" in sample["prompts"] and "<v1>" not in sample["prompts"]
        else:
            assert "<v1> toy" in sample["prompts"] and "<v2>" not in sample["prompts"]
    assert seen == {0, 1}
    batch = next(iter(dm.train_dataloader()))
    for concept, prompt in zip(batch["concept_index"].tolist(), batch["prompts"]):
        assert ("<v2> dog" if concept == 1 else "<v1> toy") in prompt


# --------------------------------------------------------------------------- resume


def test_resumed_loader_skips_consumed_batches() -> None:
    fresh = _dm()
    fresh.trainer = _fake_trainer(ready=0)
    full = list(fresh.train_dataloader())
    resumed_dm = _dm()
    resumed_dm.trainer = _fake_trainer(ready=2)
    loader = resumed_dm.train_dataloader()
    assert loader.sampler.skip_samples == 2 * 2
    first_epoch = list(loader)
    assert len(first_epoch) == len(full) - 2
    assert _same_batch(first_epoch[0], full[2])
    assert all(_same_batch(a, b) for a, b in zip(first_epoch, full[2:]))
    # The next pass over the same loader is a whole epoch again.
    assert len(list(loader)) == len(full)


def test_an_ordinary_reload_does_not_skip_batches() -> None:
    """A per-epoch reload sees the previous epoch's `ready` count but is not a resume."""
    dm = _dm()
    dm.trainer = _fake_trainer(ready=5, restarting=False)
    loader = dm.train_dataloader()
    assert loader.sampler.skip_samples == 0
    assert len(list(loader)) == len(loader)


def test_no_trainer_equals_ready_zero(synthetic_dm: PersonalizationDataModule) -> None:
    with_trainer = _dm()
    with_trainer.trainer = _fake_trainer(ready=0)
    a, b = list(synthetic_dm.train_dataloader()), list(with_trainer.train_dataloader())
    assert len(a) == len(b) and all(_same_batch(x, y) for x, y in zip(a, b))


def test_trainer_ranks_split_the_data() -> None:
    samplers = []
    for rank in (0, 1):
        dm = _dm(repeats=2)  # 10 samples
        dm.trainer = _fake_trainer(ready=0, world_size=2, rank=rank)
        samplers.append(list(dm.train_dataloader().sampler))
    assert sorted(samplers[0] + samplers[1]) == list(range(10))

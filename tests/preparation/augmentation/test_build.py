"""The augmented set: counts as configured, prompts naming the right concepts in order, the
cache reused and rebuilt on change, the same bytes from the same seed, and the bad inputs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.concept import ConceptSpec
from preparation.augmentation.build import load_or_build, planned_counts
from preparation.augmentation.settings import AugmentationSettings
from preparation.augmentation.sources import ConceptPhotos
from preparation.segmentation.part_lists import parts_for
from preparation.synthetic_concept import draw_synthetic_concept, synthetic_concept_masks

GENERAL = {
    "policeman": [Image.new("RGB", (48, 48), (40, 60, 120))],
    "denim jacket": [Image.new("RGB", (48, 48), (70, 90, 160)), Image.new("RGB", (40, 56), "gray")],
}


def concept(token: str, seed: int, count: int = 3, mask_dir: str | None = None) -> ConceptPhotos:
    photos = draw_synthetic_concept(count, 64, seed)
    return ConceptPhotos(ConceptSpec(token, "toy"), photos, [f"{i:02d}.png" for i in range(count)],
                         mask_dir)  # fmt: skip


def settings(tmp_path: Path, **overrides: object) -> AugmentationSettings:
    base = dict(g_aug=5, r_aug=4, m_aug=6, general_concepts=tuple(GENERAL),
                general_data_dir="unused", cache_dir=str(tmp_path / "cache"))  # fmt: skip
    base.update(overrides)
    return AugmentationSettings(**base)


def test_counts_and_prompts_name_the_right_concepts_in_order(tmp_path: Path) -> None:
    concepts = [concept("<v1>", 0), concept("<v2>", 1), concept("<v3>", 2)]
    built = load_or_build(concepts, GENERAL, settings(tmp_path), 48, seed=0, progress=False)
    counts = {k: len(built.of_kind(k)) for k in ("g_aug", "r_aug", "m_aug")}
    assert counts == planned_counts(settings(tmp_path), 3) == {"g_aug": 15, "r_aug": 12, "m_aug": 6}
    tokens = [c.spec.token for c in concepts]
    for item in built.items:
        named = [tokens[i] for i in item.concepts]
        positions = [item.prompt.index(t) for t in named]
        assert positions == sorted(positions), item  # the prompt names them in this order
        assert sum(t in item.prompt for t in tokens) == len(named), item  # and no other
        assert built.image(item).size == (48, 48)
    for item in built.of_kind("g_aug"):
        assert any(item.prompt.endswith(f"and {a} {n}") for n in GENERAL for a in ("a", "an"))
    for item in built.of_kind("r_aug"):
        phrase = f"{tokens[item.concepts[0]]} toy"
        assert item.prompt.startswith("the ") and item.prompt.endswith(f"part of {phrase}")
    pairs = [item.concepts for item in built.of_kind("m_aug")]
    assert set(pairs) == {(a, b) for a in range(3) for b in range(3) if a != b}  # each order
    manifest = json.loads((built.folder / "manifest.json").read_text())
    assert manifest["counts"] == counts and len(manifest["items"]) == len(built.items)


def test_m_aug_puts_the_first_named_concept_on_the_left(tmp_path: Path) -> None:
    # Two toys of clearly different colours: the left half holds the first-named one's.
    red, blue = [Image.new("RGB", (64, 64), "white") for _ in range(2)]
    red.paste((220, 20, 20), (16, 16, 48, 48)), blue.paste((20, 20, 220), (16, 16, 48, 48))
    concepts = [ConceptPhotos(ConceptSpec(t, "block"), [p], ["00.png"]) for t, p in
                (("<r>", red), ("<b>", blue))]  # fmt: skip
    built = load_or_build(concepts, {}, settings(tmp_path, g_aug=0, r_aug=0, m_aug=4), 64, 0,
                          progress=False)  # fmt: skip
    for item in built.items:
        pixels = np.asarray(built.image(item)).astype(int)
        redness = pixels[..., 0] - pixels[..., 2]
        left_red, right_red = redness[:, :32].max(), redness[:, 32:].max()
        # (the flat backgrounds are near grey: red minus blue under 30)
        assert (left_red > 150 and right_red < 30) == (item.concepts == (0, 1)), item


def test_the_cache_is_reused_and_rebuilt_when_an_option_or_photo_changes(tmp_path: Path) -> None:
    concepts, options = [concept("<v1>", 0), concept("<v2>", 1)], settings(tmp_path)
    first = load_or_build(concepts, GENERAL, options, 48, 0, progress=False)
    stamp = (first.folder / "manifest.json").stat().st_mtime_ns
    again = load_or_build(concepts, GENERAL, options, 48, 0, progress=False)
    assert again.reused and again.folder == first.folder and again.items == first.items
    assert (again.folder / "manifest.json").stat().st_mtime_ns == stamp  # nothing rewritten
    for changed in (
        dict(options=dataclasses.replace(options, g_aug=3)),
        dict(seed=1),
        dict(concepts=[concept("<v1>", 0), concept("<v2>", 7)]),
        dict(general={"policeman": GENERAL["policeman"]}),
    ):
        args = dict(concepts=concepts, general=GENERAL, options=options, seed=0) | changed
        other = load_or_build(args["concepts"], args["general"], args["options"], 48,
                              args["seed"], progress=False)  # fmt: skip
        assert not other.reused and other.folder != first.folder, changed
    # Training-only switches do not rebuild.
    same = dataclasses.replace(options, train_on_m_aug=True, contrastive_kinds=("g_aug",))
    assert load_or_build(concepts, GENERAL, same, 48, 0, progress=False).folder == first.folder


def test_the_same_seed_builds_the_same_bytes_anywhere(tmp_path: Path) -> None:
    concepts = [concept("<v1>", 0), concept("<v2>", 1)]
    one = load_or_build(concepts, GENERAL, settings(tmp_path / "a"), 48, 3, progress=False)
    two = load_or_build(concepts, GENERAL, settings(tmp_path / "b"), 48, 3, progress=False)
    assert one.items == two.items
    for item in one.items:
        assert (one.folder / item.file).read_bytes() == (two.folder / item.file).read_bytes()


def test_user_masks_are_used_and_checked(tmp_path: Path) -> None:
    masks = tmp_path / "masks"
    masks.mkdir()
    for i, mask in enumerate(synthetic_concept_masks(3, 64, 0)):
        Image.fromarray(mask.astype(np.uint8) * 255).save(masks / f"{i:02d}.png")
    with_masks = [concept("<v1>", 0, mask_dir=str(masks)), concept("<v2>", 1)]
    built = load_or_build(with_masks, GENERAL, settings(tmp_path), 48, 0, progress=False)
    assert len(built.of_kind("m_aug")) == 6
    Image.new("L", (64, 64), 0).save(masks / "01.png")  # an empty mask
    with pytest.raises(ValueError, match=r"01\.png is empty"):
        load_or_build(with_masks, GENERAL, settings(tmp_path), 48, 0, progress=False)
    Image.new("L", (64, 64), 255).save(masks / "01.png")  # all foreground
    with pytest.raises(ValueError, match="all foreground"):
        load_or_build(with_masks, GENERAL, settings(tmp_path), 48, 0, progress=False)
    (masks / "01.png").rename(masks / "photo_1.png")  # names no longer match the photos
    with pytest.raises(FileNotFoundError, match=r"no mask for photo\(s\) \['01'\]"):
        load_or_build(with_masks, GENERAL, settings(tmp_path), 48, 0, progress=False)


def test_m_aug_with_one_concept_and_a_concept_without_photos_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="M-Aug puts two concepts side by side"):
        load_or_build([concept("<v1>", 0)], GENERAL, settings(tmp_path), 48, 0, progress=False)
    built = load_or_build([concept("<v1>", 0)], GENERAL, settings(tmp_path, m_aug=0), 48, 0,
                          progress=False)  # fmt: skip
    assert not built.of_kind("m_aug")
    with pytest.raises(ValueError, match="has no photos"):
        ConceptPhotos(ConceptSpec("<v2>", "cat"), [], [])


def test_the_sam_backend_builds_with_the_tiny_models(tmp_path: Path) -> None:
    # Random weights: the masks mean nothing, but the whole path runs, the labels come from
    # the part list or are places, and the models' names are part of the key.
    sam = {"sam_model": "tiny-sam", "grounding_model": "tiny-grounding-dino"}
    options = settings(tmp_path, segmenter="sam", m_aug=2, parts={"<v1>": ["wheel"]}, **sam)
    concepts = [concept("<v1>", 0, count=2), concept("<v2>", 1, count=2)]
    try:
        built = load_or_build(concepts, GENERAL, options, 48, 0, progress=False)
    except ValueError as error:  # a random SAM may give an unusable mask: it must say so
        assert "segmenter output" in str(error)
        return
    places = ("upper", "middle", "lower", "left", "right", "central")
    allowed = {0: ["wheel"], 1: parts_for("toy")}  # configured, else the class's defaults
    for item in built.of_kind("r_aug"):
        label = item.prompt[len("the ") : item.prompt.index(" of <")]
        is_place = label.endswith(" part") and any(p in label for p in places)
        assert label in allowed[item.concepts[0]] or is_place, item.prompt
    assert built.folder.name != load_or_build(concepts, GENERAL, settings(tmp_path, m_aug=2), 48,
                                              0, progress=False).folder.name  # fmt: skip


class TinyMasks:
    """A segmenter whose mask of photo 1 is a sliver (what a failed fallback gives)."""

    def __init__(self) -> None:
        self.calls = 0

    def foreground(self, image: Image.Image, class_word: str) -> np.ndarray:
        mask = np.zeros((image.height, image.width), bool)
        if self.calls == 1:
            mask[:4, :4] = True
        else:
            mask[8:-8, 8:-8] = True
        self.calls += 1
        return mask


def test_a_photo_the_segmenter_missed_is_left_out_with_a_warning() -> None:
    from preparation.augmentation.sources import segment_concept

    with pytest.warns(UserWarning, match=r"'<v1>' \(toy\) in photo\(s\) 01.png \(kept"):
        kept = segment_concept(concept("<v1>", 0), 48, TinyMasks())
    assert [photo.name for photo in kept] == ["00.png", "02.png"]
    missing = TinyMasks()
    missing.calls = 1
    one = ConceptPhotos(ConceptSpec("<v1>", "cat"), draw_synthetic_concept(1, 64, 0), ["00.png"])
    with pytest.raises(ValueError, match=r"in every photo at 48 px: 00.png \(kept"):
        segment_concept(one, 48, missing)


def test_a_set_another_process_placed_meanwhile_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two nodes' rank zero building the same key on a shared disk: the second keeps the first's.
    import preparation.augmentation.build as build

    concepts, options = [concept("<v1>", 0), concept("<v2>", 1)], settings(tmp_path)
    first = load_or_build(concepts, GENERAL, options, 48, 0, progress=False)
    stamp = (first.folder / "manifest.json").stat().st_mtime_ns
    real_load = build._load
    calls = iter([None])  # the first look (before building) finds nothing
    monkeypatch.setattr(build, "_load", lambda *a: next(calls, "after") and real_load(*a))
    again = load_or_build(concepts, GENERAL, options, 48, 0, progress=False)
    assert not again.reused and again.folder == first.folder
    assert (first.folder / "manifest.json").stat().st_mtime_ns == stamp  # not replaced
    assert not list(first.folder.parent.glob(".*building*"))  # no staging folder left

"""Reading a subject's photo folder: clear early errors on bad input, any image becomes RGB."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.personalization import ConceptData, PersonalizationDataModule
from preparation.photos import (
    list_image_files,
    load_image_folder,
    load_rgb_image,
)


def _save(
    path: Path, mode: str = "RGB", size: tuple[int, int] = (24, 16), **kwargs
) -> Path:
    colour = {"RGB": (200, 30, 60), "L": 90, "CMYK": (0, 200, 100, 0)}.get(mode, 0)
    Image.new(mode, size, colour).save(path, **kwargs)
    return path


def _good_folder(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        _save(folder / f"{i:02d}.jpg")
    return folder


# --------------------------------------------------------------------------- bad input


def test_missing_folder_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_subject"
    with pytest.raises(FileNotFoundError) as excinfo:
        PersonalizationDataModule(instance_data_dir=str(missing), class_word="dog")
    assert str(missing) in str(excinfo.value)
    assert "instance_data_dir" in str(excinfo.value)


def test_a_file_instead_of_a_folder_says_so(tmp_path: Path) -> None:
    file = _save(tmp_path / "single.jpg")
    with pytest.raises(NotADirectoryError, match="single.jpg' is a file, not a folder"):
        PersonalizationDataModule(instance_data_dir=str(file), class_word="dog")


def test_empty_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    empty = tmp_path / "empty_subject"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no images") as excinfo:
        PersonalizationDataModule(instance_data_dir=str(empty), class_word="dog")
    assert str(empty) in str(excinfo.value)


def test_folder_with_only_text_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "captions_only"
    folder.mkdir()
    (folder / "caption.txt").write_text("a photo of a dog")
    (folder / "notes.jpg.txt").write_text("not an image either")
    with pytest.raises(ValueError, match="holds no images") as excinfo:
        PersonalizationDataModule(instance_data_dir=str(folder), class_word="dog")
    assert str(folder) in str(excinfo.value)


def test_unreadable_file_among_good_images_is_named(tmp_path: Path) -> None:
    folder = _good_folder(tmp_path / "subject", n=3)
    (folder / "broken.jpg").write_bytes(b"this is not a jpeg \x00\x01\x02" * 20)
    with pytest.raises(ValueError, match="broken.jpg") as excinfo:
        PersonalizationDataModule(instance_data_dir=str(folder), class_word="dog")
    assert "Cannot read image" in str(excinfo.value)
    # Only the bad file is named, not one of the good ones.
    assert "00.jpg" not in str(excinfo.value)


def test_truncated_image_is_named(tmp_path: Path) -> None:
    folder = _good_folder(tmp_path / "subject", n=1)
    whole = _save(tmp_path / "whole.png", size=(64, 64)).read_bytes()
    (folder / "cut.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match="cut.png"):
        load_image_folder(folder)


@pytest.mark.parametrize("template", ["a photo of a dog", "a {} photo of a {}"])
def test_prompt_template_needs_exactly_one_placeholder(template: str) -> None:
    with pytest.raises(ValueError, match="exactly once") as excinfo:
        PersonalizationDataModule(prompt_templates=["a photo of a {}", template])
    assert repr(template) in str(excinfo.value)


def test_instance_data_dir_without_class_word(tmp_path: Path) -> None:
    folder = _good_folder(tmp_path / "subject")
    with pytest.raises(ValueError, match="class_word"):
        PersonalizationDataModule(instance_data_dir=str(folder))


def test_duplicate_concept_tokens() -> None:
    with pytest.raises(ValueError, match="tokens must differ") as excinfo:
        PersonalizationDataModule(additional_concepts=[ConceptData(token="<v1>")])
    assert "<v1>" in str(excinfo.value)


def test_bad_additional_concept_folder_fails_at_construction(tmp_path: Path) -> None:
    missing = tmp_path / "second_subject"
    with pytest.raises(FileNotFoundError, match="second_subject"):
        PersonalizationDataModule(
            resolution=32,
            additional_concepts=[
                ConceptData("<v2>", "dog", instance_data_dir=str(missing))
            ],
        )


# --------------------------------------------------------------------------- listing


def test_listing_is_sorted_and_filters_suffixes(tmp_path: Path) -> None:
    _save(tmp_path / "b.png")
    _save(tmp_path / "a.JPG", format="JPEG")
    _save(tmp_path / "c.webp")
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / "sub.png.d").mkdir()
    names = [p.name for p in list_image_files(tmp_path)]
    assert names == ["a.JPG", "b.png", "c.webp"]


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
def test_formats_are_read(tmp_path: Path, suffix: str) -> None:
    _save(tmp_path / f"img{suffix}", size=(30, 20))
    (image,) = load_image_folder(tmp_path)
    assert image.mode == "RGB"
    assert image.size == (30, 20)
    # Lossy formats shift colours slightly; the colour must still be the red we drew.
    mean = np.asarray(image, dtype=np.float32).reshape(-1, 3).mean(0)
    assert np.abs(mean - (200, 30, 60)).max() < 12, mean


def test_folder_reads_every_image_in_name_order(tmp_path: Path) -> None:
    for name, size in [("b.png", (10, 12)), ("a.jpg", (14, 16)), ("c.webp", (18, 20))]:
        _save(tmp_path / name, size=size)
    images = load_image_folder(tmp_path)
    assert [im.size for im in images] == [(14, 16), (10, 12), (18, 20)]


def _can_save_png(mode: str) -> bool:
    try:
        Image.new(mode, (2, 2)).save(io.BytesIO(), format="PNG")
    except (OSError, KeyError, ValueError):
        return False
    return True


@pytest.mark.parametrize(
    "mode,suffix",
    [
        ("RGBA", ".png"),
        ("P", ".png"),
        ("L", ".png"),
        ("LA", ".png"),
        ("1", ".png"),
        ("CMYK", ".jpg"),
        ("I;16", ".png"),
        ("I", ".png"),
    ],
)
def test_every_mode_becomes_rgb(tmp_path: Path, mode: str, suffix: str) -> None:
    if suffix == ".png" and not _can_save_png(mode):
        pytest.skip(f"PIL cannot save mode {mode} as PNG")
    path = tmp_path / f"img{suffix}"
    Image.new(mode, (12, 10)).save(path)
    image = load_rgb_image(path)
    assert image.mode == "RGB"
    assert image.size == (12, 10)


def test_grayscale_values_survive(tmp_path: Path) -> None:
    ramp = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (4, 1))
    Image.fromarray(ramp, "L").save(tmp_path / "ramp.png")
    rgb = np.asarray(load_rgb_image(tmp_path / "ramp.png"))
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], ramp)


def test_cmyk_colour_is_converted(tmp_path: Path) -> None:
    # Pure cyan in CMYK is (0, 255, 255) in RGB.
    Image.new("CMYK", (8, 8), (255, 0, 0, 0)).save(tmp_path / "cyan.jpg", quality=100)
    rgb = np.asarray(load_rgb_image(tmp_path / "cyan.jpg"), dtype=np.int32)
    assert np.abs(rgb.reshape(-1, 3).mean(0) - (0, 255, 255)).max() < 20


def test_sixteen_bit_grayscale_keeps_its_tones(tmp_path: Path) -> None:
    ramp8 = np.tile(np.arange(0, 256, 16, dtype=np.uint16), (4, 1))
    Image.fromarray(ramp8 * 257).save(tmp_path / "ramp16.png")  # 16-bit grayscale PNG
    rgb = np.asarray(load_rgb_image(tmp_path / "ramp16.png"), dtype=np.int32)
    assert np.abs(rgb[..., 0] - ramp8).max() <= 1


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_pixels_become_white(tmp_path: Path, mode: str) -> None:
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))  # fully transparent black
    rgba.paste((20, 20, 20, 255), (0, 0, 5, 10))  # opaque dark left half
    if mode == "P":
        # Palette entry 0 (black) is transparent, entry 1 is the dark grey.
        image = Image.new("P", (10, 10), 0)
        image.putpalette([0, 0, 0, 20, 20, 20] + [0, 0, 0] * 254)
        image.paste(1, (0, 0, 5, 10))
        image.save(tmp_path / "alpha.png", transparency=0)
    else:
        rgba.convert(mode).save(tmp_path / "alpha.png")
    with Image.open(tmp_path / "alpha.png") as reopened:
        assert reopened.mode == mode
    rgb = np.asarray(load_rgb_image(tmp_path / "alpha.png"))
    assert (rgb[:, 5:] == 255).all(), "transparent right half must be white"
    assert (rgb[:, :5] == 20).all(), "opaque left half keeps its colour"


def test_exif_orientation_is_honoured(tmp_path: Path) -> None:
    image = Image.new("RGB", (40, 20), (255, 255, 255))
    image.paste((255, 0, 0), (0, 0, 10, 20))  # red stripe on the left edge
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    with Image.open(path) as raw:
        assert raw.size == (40, 20)  # the stored pixels are not rotated
    loaded = load_rgb_image(path)
    assert loaded.size == (20, 40)
    # Rotating 90 degrees clockwise puts the left edge at the top.
    array = np.asarray(loaded, dtype=np.int32)
    assert array[:8, :, 1].mean() < 60 and array[:8, :, 0].mean() > 200
    assert array[-8:, :, 1].mean() > 200
    # Orientation is applied once, not left for later: no EXIF orientation remains.
    assert loaded.getexif().get(0x0112, 1) == 1


def test_datamodule_holds_the_loaded_images(tmp_path: Path) -> None:
    folder = tmp_path / "subject"
    folder.mkdir()
    _save(folder / "a.png", mode="L", size=(20, 30))
    _save(folder / "b.jpg", size=(32, 32))
    dm = PersonalizationDataModule(instance_data_dir=str(folder), class_word="dog", resolution=64)
    assert len(dm.images) == 1
    assert [im.size for im in dm.images[0]] == [(20, 30), (32, 32)]
    assert all(im.mode == "RGB" for im in dm.images[0])

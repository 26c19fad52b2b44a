"""Read a folder of a subject's photos, failing early and clearly on bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def list_image_files(folder: str | Path) -> list[Path]:
    """Image files of a folder, sorted by name; errors name the folder and the fix."""
    path = Path(folder)
    if path.is_file():
        raise NotADirectoryError(
            f"instance_data_dir {str(path)!r} is a file, not a folder; point it at the folder "
            "that holds the subject's 3-6 photos."
        )
    if not path.is_dir():
        raise FileNotFoundError(
            f"Image folder {str(path)!r} does not exist; set instance_data_dir to a folder "
            "holding 3-6 photos of the subject (jpg, png or webp)."
        )
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(
            f"Image folder {str(path)!r} holds no images ({', '.join(IMAGE_SUFFIXES)}); add "
            "photos of the subject or point instance_data_dir elsewhere."
        )
    return files


def load_rgb_image(file: Path) -> Image.Image:
    """Open an image fully, honour its EXIF orientation, convert any mode to RGB."""
    try:
        with Image.open(file) as image:
            image.load()
            oriented = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError:
        width, height = pixel_size(file)
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)  # PIL refuses above twice its warning size
        raise ValueError(
            f"Photo {str(file)!r} is {width}x{height} px ({width * height:,} pixels), over the "
            f"{limit:,} PIL opens safely; use a smaller copy (e.g. 2048 px on the long side)."
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(
            f"Cannot read image {str(file)!r} ({error}); remove or replace that file."
        ) from error
    if oriented.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: convert("RGB") would clip everything above 255 to white.
        values = np.asarray(oriented, dtype=np.float64)
        full_scale = 65535.0 if values.max() <= 65535 else float(values.max())
        scaled = values.clip(min=0) * 255.0 / full_scale
        oriented = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if oriented.mode in ("RGBA", "LA", "PA", "P") or "transparency" in oriented.info:
        # Transparent pixels become white rather than whatever colour they happen to hold.
        rgba = oriented.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return oriented.convert("RGB")


def pixel_size(file: Path) -> tuple[int, int]:
    """An image's width and height from its header, even past PIL's decompression-bomb limit
    (nothing is decoded)."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(file) as image:
            return image.size
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def check_photo_sizes(images: list[Image.Image], folder: str | None, resolution: int) -> None:
    """Photos whose shorter side is under a quarter of the resolution would be upscaled more
    than 4x into blur; refuse them, naming the photo."""
    if folder is None:
        return
    for image, file in zip(images, list_image_files(folder)):
        if min(image.size) * 4 < resolution:
            raise ValueError(
                f"Photo {str(file)!r} is {image.size[0]}x{image.size[1]} px, less than a quarter "
                f"of the training resolution {resolution}; use photos at least "
                f"{-(-resolution // 4)} px on their shorter side or a lower resolution."
            )


def load_image_folder(folder: str | Path) -> list[Image.Image]:
    """Every image of the folder as RGB; any unreadable file is an error naming it."""
    return [load_rgb_image(file) for file in list_image_files(folder)]

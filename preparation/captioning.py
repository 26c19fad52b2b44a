"""Caption a concept's photos once with a vision-language model, for ACCORD's conditions.

ACCORD captions photos that come without captions with a VLM (the paper uses InternVL; we
use BLIP's captioning model through transformers, ``BlipForConditionalGeneration``, by hub id
or local folder; ``tiny-blip-captioner`` is a tiny random one for tests). Each caption becomes
a template by putting "{}" (the concept phrase) in place of the class noun: "a dog sitting on
a bench" -> "a {} sitting on a bench". A caption that does not name the class gets the concept
appended ("a man on a bench, with a {}") and a warning, since its general part then still
describes the subject.

Captions are cached under ``$PERSONALIZE_CACHE/captions/``, keyed by a manifest of the photos
(their pixels), the class word and the captioner, so the model runs once per subject and a
changed photo or captioner recaptions. Each cache entry is also written as a ``captions.txt``
that can be edited and put beside the photos, where it then takes precedence.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from core.atomic import write_file_atomically
from core.cache import cache_root
from pretrained.eval_models import load_eval_model

CAPTIONER_OPTION = "data.init_args.captions.captioner"
MAX_NEW_TOKENS = 30
CACHE_VERSION = 1


def _load_captioner(path: str) -> tuple[Any, Any]:
    from transformers import BlipForConditionalGeneration, BlipProcessor

    model = BlipForConditionalGeneration.from_pretrained(path).eval().requires_grad_(False)
    return model, BlipProcessor.from_pretrained(path)


def caption_template(caption: str, class_word: str) -> tuple[str, bool]:
    """(the caption with "{}" in place of the first whole-word class noun, whether it was
    found); without it the concept is appended, so the template always holds "{}" once."""
    caption = " ".join(caption.replace("{", "(").replace("}", ")").split())
    pattern = re.compile(rf"(?<!\w){re.escape(class_word)}(?:s|es)?(?!\w)", re.IGNORECASE)
    if pattern.search(caption):
        return pattern.sub("{}", caption, count=1), True
    return f"{caption.rstrip(' .,')}, with a {{}}", False


def photos_manifest(images: list[Image.Image], class_word: str, captioner: str) -> str:
    """A key for these photos (pixels and sizes), class word and captioner."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}|{captioner}|{class_word}".encode())
    for image in images:
        rgb = image.convert("RGB")
        digest.update(f"{rgb.size}".encode())
        digest.update(rgb.tobytes())
    return digest.hexdigest()[:20]


@torch.no_grad()
def generate_captions(images: list[Image.Image], captioner: str) -> list[str]:
    """One caption per image with the named BLIP captioning model (greedy decoding)."""
    model, processor = load_eval_model(
        captioner, _load_captioner, "ACCORD's captions", CAPTIONER_OPTION
    )
    captions = []
    for image in tqdm(images, desc="captioning photos", unit="photo"):
        inputs = processor(images=image.convert("RGB"), return_tensors="pt")
        ids = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        captions.append(processor.decode(ids[0], skip_special_tokens=True).strip())
    return captions


def caption_photos(
    images: list[Image.Image], names: list[str], class_word: str, captioner: str
) -> list[str]:
    """Caption templates of ``images`` (in order), from the cache or made now and cached."""
    key = photos_manifest(images, class_word, captioner)
    folder = cache_root() / "captions" / key
    cached = folder / "captions.json"
    if cached.exists():
        return [entry["template"] for entry in json.loads(cached.read_text())["photos"]]
    raw = generate_captions(images, captioner)
    entries = []
    for name, caption in zip(names, raw, strict=True):
        template, named = caption_template(caption, class_word)
        if not named:
            warnings.warn(
                f"The caption of {name} ({caption!r}) does not name the class {class_word!r}; "
                f"the concept is appended ({template!r}). Write a captions.txt beside the photos "
                f"to choose the captions yourself (a start is in {folder / 'captions.txt'}).",
                stacklevel=2,
            )
        entries.append({"file": name, "caption": caption, "template": template})
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"captioner": captioner, "class_word": class_word, "photos": entries}
    write_file_atomically(cached, lambda f: f.write(json.dumps(manifest, indent=2).encode()))
    lines = [f"{e['file']}: {e['template']}" for e in entries]
    text = "\n".join(lines) + "\n"
    write_file_atomically(folder / "captions.txt", lambda f: f.write(text.encode()))
    return [e["template"] for e in entries]

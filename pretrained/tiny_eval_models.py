"""Tiny random evaluation models, built in code, saved, and loaded like the real ones.

No weights can be downloaded here, so every model an evaluation metric uses has a tiny random
twin with the real class (ViT for DINO, BLIP and BLIP-2 retrieval, Grounding-DINO, SAM, our
VGG feature net) and its processor. Each is saved once into the tiny cache folder and then goes
through the same ``from_pretrained`` path as the hub model, so tests exercise the real loading
and preprocessing code. Configs name them ``tiny-dino``, ``tiny-blip``, ... (``tiny-clip`` lives
with the tiny pipeline in `pretrained.tiny_sd`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from transformers import (
    BertTokenizer,
    Blip2Config,
    Blip2ForImageTextRetrieval,
    Blip2Processor,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipForImageTextRetrieval,
    BlipImageProcessor,
    BlipProcessor,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoImageProcessor,
    GroundingDinoProcessor,
    SamConfig,
    SamImageProcessor,
    SamModel,
    SamProcessor,
    ViTConfig,
    ViTModel,
)

from core.dreambench import DREAMBENCH_CLASS_WORDS, DREAMBENCH_LIVE, DREAMBENCH_OBJECT
from pretrained.resolve import resolve_pretrained
from pretrained.tiny_sd import TINY_TRANSFORMER, ensure_built, seeded, tiny_vision_config
from pretrained.vgg import VGGFeatures

TINY_IMAGE = 32  # BLIP / BLIP-2 input side; DINO keeps its real 224 input (cheap at width 32)
TINY_DETECTOR_IMAGE = 64  # Grounding-DINO and SAM input side
_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _tiny_bert_tokenizer(folder: Path) -> BertTokenizer:
    """A WordPiece vocabulary of the prompt words, plus letters so any word tokenizes."""
    prompts = " ".join(DREAMBENCH_OBJECT + DREAMBENCH_LIVE + tuple(DREAMBENCH_CLASS_WORDS))
    words = set(prompts.replace("{}", "").lower().split()) | {"toy", "photo", "of"}
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = _SPECIAL + list(".,!?'-") + [str(d) for d in range(10)] + letters
    vocab += [f"##{c}" for c in letters] + sorted(words - set(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizer.from_pretrained(folder, do_lower_case=True)


def save_tiny_dino(folder: Path) -> Path:
    """ViT-S/16's layout (patch 16, 224 input, CLS token) at width 32; no pooler, as DINO."""
    config = ViTConfig(
        **TINY_TRANSFORMER,
        image_size=224,
        patch_size=16,
    )
    seeded(lambda: ViTModel(config, add_pooling_layer=False), 2).save_pretrained(folder)
    return folder


def _tiny_blip_config(tokenizer: BertTokenizer) -> BlipConfig:
    """BLIP's layout (ViT + BERT with cross-attention) at width 32, for ``tokenizer``."""
    return BlipConfig(
        text_config={
            "vocab_size": len(tokenizer),
            **TINY_TRANSFORMER,
            "max_position_embeddings": 64,
            "encoder_hidden_size": 32,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.cls_token_id,
            "sep_token_id": tokenizer.sep_token_id,
        },
        vision_config=tiny_vision_config(TINY_IMAGE),
        projection_dim=16,
        image_text_hidden_size=16,
    )


def _save_tiny_blip_as(folder: Path, model_class: type, seed: int) -> Path:
    tokenizer = _tiny_bert_tokenizer(folder)
    config = _tiny_blip_config(tokenizer)
    seeded(lambda: model_class(config), seed).save_pretrained(folder)
    image_processor = BlipImageProcessor(size={"height": TINY_IMAGE, "width": TINY_IMAGE})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def save_tiny_blip(folder: Path) -> Path:
    """BLIP image-text retrieval (ITM + ITC heads) with a tiny BERT text encoder."""
    return _save_tiny_blip_as(folder, BlipForImageTextRetrieval, 3)


def save_tiny_blip_captioner(folder: Path) -> Path:
    """BLIP captioning (``BlipForConditionalGeneration``, ACCORD's captions) at the same size."""
    return _save_tiny_blip_as(folder, BlipForConditionalGeneration, 8)


def save_tiny_blip2(folder: Path) -> Path:
    """BLIP-2 image-text retrieval: tiny ViT, a 2-layer Q-Former with 4 queries and text input."""
    tokenizer = _tiny_bert_tokenizer(folder)
    config = Blip2Config(
        vision_config=tiny_vision_config(TINY_IMAGE),
        qformer_config={
            "vocab_size": len(tokenizer),
            **TINY_TRANSFORMER,
            "encoder_hidden_size": 32,
            "max_position_embeddings": 64,
            "cross_attention_frequency": 1,
            "use_qformer_text_input": True,
            "pad_token_id": tokenizer.pad_token_id,
        },
        num_query_tokens=4,
        image_text_hidden_size=16,
    )
    seeded(lambda: Blip2ForImageTextRetrieval(config), 4).save_pretrained(folder)
    image_processor = BlipImageProcessor(size={"height": TINY_IMAGE, "width": TINY_IMAGE})
    Blip2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def save_tiny_grounding_dino(folder: Path) -> Path:
    """Grounding-DINO with a 2-stage tiny Swin backbone and a 1-layer BERT text backbone."""
    tokenizer = _tiny_bert_tokenizer(folder)
    config = GroundingDinoConfig(
        backbone_config={
            "model_type": "swin",
            "image_size": TINY_DETECTOR_IMAGE,
            "patch_size": 4,
            "embed_dim": 16,
            "depths": [1, 1],
            "num_heads": [1, 2],
            "window_size": 4,
            "out_features": ["stage1", "stage2"],
        },
        text_config={
            "model_type": "bert",
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "max_position_embeddings": 64,
        },
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,  # >= 2: the model ties the later box heads to the first one
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_queries=10,
        num_feature_levels=2,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=32,
        use_timm_backbone=False,
        use_pretrained_backbone=False,
    )
    seeded(lambda: GroundingDinoForObjectDetection(config), 5).save_pretrained(folder)
    side = TINY_DETECTOR_IMAGE
    image_processor = GroundingDinoImageProcessor(
        size={"shortest_edge": side, "longest_edge": side}
    )
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(
        folder
    )
    return folder


def save_tiny_sam(folder: Path) -> Path:
    """SAM with a 1-layer ViT image encoder on 64-pixel inputs (a 4x4 image embedding)."""
    side = TINY_DETECTOR_IMAGE
    config = SamConfig(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "image_size": side,
            "patch_size": 16,
            "output_channels": 16,
            "global_attn_indexes": [0],
            "window_size": 0,
            "num_pos_feats": 8,
            "mlp_dim": 64,
        },
        prompt_encoder_config={
            "hidden_size": 16,
            "image_size": side,
            "patch_size": 16,
            "mask_input_channels": 4,
        },
        mask_decoder_config={
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "mlp_dim": 32,
            "iou_head_hidden_dim": 16,
        },
    )
    seeded(lambda: SamModel(config), 6).save_pretrained(folder)
    image_processor = SamImageProcessor(
        size={"longest_edge": side}, pad_size={"height": side, "width": side}
    )
    SamProcessor(image_processor=image_processor).save_pretrained(folder)
    return folder


def save_tiny_vgg(folder: Path) -> Path:
    """Our VGG-19 feature net (see `pretrained.vgg`) with 8..32 channels."""
    seeded(lambda: VGGFeatures(widths=(8, 16, 32, 32, 32)), 7).save_pretrained(folder)
    return folder


# name -> (builder, a file that exists once the build finished)
TINY_EVAL_MODELS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "tiny-dino": (save_tiny_dino, "config.json"),
    "tiny-blip": (save_tiny_blip, "config.json"),
    "tiny-blip2": (save_tiny_blip2, "config.json"),
    "tiny-blip-captioner": (save_tiny_blip_captioner, "config.json"),
    "tiny-grounding-dino": (save_tiny_grounding_dino, "config.json"),
    "tiny-sam": (save_tiny_sam, "config.json"),
    "tiny-vgg": (save_tiny_vgg, "config.json"),
}


def resolve_eval_model(name_or_path: str) -> str:
    """Map a ``tiny-*`` name to its cache folder (building it once); leave others as given."""
    if name_or_path in TINY_EVAL_MODELS:
        build, marker = TINY_EVAL_MODELS[name_or_path]
        return str(ensure_built(name_or_path, build, marker))
    return resolve_pretrained(name_or_path)

"""The LoRA baseline's ``adapter`` kinds through peft: each trains only its own weights; DoRA's
export loads with diffusers' ``load_lora_weights`` and samples the module's images; LoHa's and
LoKr's LyCORIS file, merged into a fresh UNet by the clients' formulas (ComfyUI's
``weight_adapter`` LoHa / LoKr: the update (w1a w1b) * (w2a w2b) or kron(w1, w2), times alpha / r
where r is read from a ``_b`` factor, else 1), samples the module's images too."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from helpers import optimizer_with_lr, snapshot, tiny_datamodule, tiny_trainer
from safetensors.torch import load_file

from core.concept import ConceptSpec
from exports.external_formats import load_embedding
from models import LoRA
from models.lora import LYCORIS_FILE, load_lora
from models.lora_adapters import LORA_WEIGHTS
from pretrained.tiny_sd import ensure_tiny_pipeline

PROMPT, STEPS = "a photo of <v1> toy", 2
MARKS = {"dora": "lora_magnitude_vector", "loha": "hada_w2_b", "lokr": "lokr_w2"}


@pytest.mark.parametrize("kind", sorted(MARKS))
def test_each_kind_trains_only_its_adapter_weights(kind: str, tmp_path: Path) -> None:
    datamodule = tiny_datamodule()
    module = LoRA(concepts=datamodule.concepts, optimizer=optimizer_with_lr(1e-2), adapter=kind)
    before = snapshot(module)
    tiny_trainer(tmp_path, max_steps=2).fit(module, datamodule=datamodule)
    after = snapshot(module)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and any(MARKS[kind] in name for name in changed)
    assert all(any(m in name for m in ("lora_", "hada_", "lokr_")) for name in changed), changed


def randomized(kind: str) -> LoRA:
    module = LoRA(concepts=[ConceptSpec("<v1>", "toy")], rank=2, alpha=3.0, adapter=kind)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in module.unet.named_parameters():
            if any(m in name for m in ("lora_", "hada_", "lokr_")):
                noise = torch.randn(param.shape, generator=generator)
                param.copy_(1 + 0.1 * noise if "magnitude" in name else 0.3 * noise)
    return module


def sample(pipe: StableDiffusionPipeline) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        return pipe(
            PROMPT, num_inference_steps=STEPS, guidance_scale=6.0, height=32, width=32,
            generator=torch.Generator().manual_seed(0), output_type="pt",
        ).images  # fmt: skip


def module_images(module: LoRA) -> tuple[torch.Tensor, torch.Tensor]:
    """The module's own images and the plain model's, through the same DDIM pipeline."""
    ours = module.generate([PROMPT], seed=0, num_inference_steps=STEPS, guidance_scale=6.0)
    plain = StableDiffusionPipeline.from_pretrained(ensure_tiny_pipeline())
    plain.scheduler = module.pipeline().scheduler
    return ours, sample(plain)


@pytest.mark.smoke  # the newest allowed versions too
def test_dora_export_loads_with_diffusers_and_samples_the_same(
    tmp_path: Path
) -> None:
    module = randomized("dora")
    module.export(tmp_path)
    assert any("lora_magnitude_vector" in k for k in load_file(str(tmp_path / LORA_WEIGHTS)))
    ours, plain = module_images(module)
    pipe = StableDiffusionPipeline.from_pretrained(ensure_tiny_pipeline())
    pipe.scheduler = module.pipeline().scheduler
    load_lora(pipe, tmp_path)
    assert torch.allclose(ours, sample(pipe), atol=1e-4) and (ours - plain).abs().max() > 1e-2


def comfy_update(weights: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """ComfyUI's LoHa / LoKr update of one layer from its LyCORIS weights."""
    alpha = weights.get("alpha")
    if "hada_w1_a" in weights:
        rank = weights["hada_w1_b"].shape[0]
        first = weights["hada_w1_a"] @ weights["hada_w1_b"]
        second = weights["hada_w2_a"] @ weights["hada_w2_b"]
        return first * second * (float(alpha) / rank if alpha is not None else 1.0)
    factors, rank = [], None
    for side in ("lokr_w1", "lokr_w2"):
        if side in weights:
            factors.append(weights[side])
        else:
            rank = weights[f"{side}_b"].shape[0]
            factors.append(weights[f"{side}_a"] @ weights[f"{side}_b"])
    scale = float(alpha) / rank if alpha is not None and rank is not None else 1.0
    return torch.kron(*factors).reshape(shape) * scale


@pytest.mark.smoke
@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_the_lycoris_file_merged_as_comfyui_does_samples_the_same(
    kind: str, tmp_path: Path
) -> None:
    module = randomized(kind)
    module.export(tmp_path)
    assert not (tmp_path / LORA_WEIGHTS).exists()
    stored = load_file(str(tmp_path / LYCORIS_FILE))
    ours, plain = module_images(module)
    pipe = StableDiffusionPipeline.from_pretrained(ensure_tiny_pipeline())
    pipe.scheduler = module.pipeline().scheduler
    # kohya's SD 1.x names: "lora_unet_" + the diffusers path with dots as underscores
    by_name = {f"lora_unet_{n.replace('.', '_')}": m for n, m in pipe.unet.named_modules()}
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in stored.items():
        name, weight = key.split(".", 1)
        layers.setdefault(name, {})[weight] = value
    assert layers and set(layers) <= set(by_name)
    with torch.no_grad():
        for name, weights in layers.items():
            target = by_name[name].weight
            target += comfy_update(weights, target.shape)
    load_embedding(pipe, tmp_path / "<v1>.safetensors")
    theirs = sample(pipe)
    assert torch.allclose(ours, theirs, atol=1e-4) and (ours - plain).abs().max() > 1e-2
    with pytest.raises(ValueError, match="diffusers cannot load"):
        load_lora(StableDiffusionPipeline.from_pretrained(ensure_tiny_pipeline()), tmp_path)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"adapter": "lora+"}, "adapter must be one of lora, dora, loha, lokr"),
        ({"adapter": "loha", "train_text_encoder": True}, "set train_text_encoder: false"),
        ({"adapter": "dora", "pretrained_model_name_or_path": "tiny-flux"}, "on FLUX"),
    ],
)
def test_bad_adapter_options_are_refused(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LoRA(concepts=[ConceptSpec("<v1>", "toy")], **options)

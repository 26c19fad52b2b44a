"""Cross-attention maps of the concept, its class word and context words, in TensorBoard.

ClassDiffusion Fig. 3b (the class token's activation fades as tuning drifts the concept away from
its class) and the diverse-context paper's Fig. 5 / Table 1 (an overfit concept's map covers the
context's). With ``source: generation`` (the default) a fixed-seed generation of a few prompts
runs under `AttentionCapture`, which averages the probabilities over heads, cross-attention
layers and denoising steps on a ``resolution`` x ``resolution`` grid (each layer resized to it);
only the conditional half of the classifier-free-guidance batch is read. With ``source:
noisy_latent`` the maps come from one conditional UNet call on a fixed noisy latent (the
concept's first instance image noised with a fixed seed at a mid timestep), much cheaper, and
the heat maps lie over that instance image. A word of several tokens (or a multi-vector concept)
gets the sum of its tokens' probabilities, the attention mass it receives.

- ``attn/<token>``: heat maps over the generated (or instance) images (greyscale), one per
  prompt (concept token, class word, each context word), coloured on one scale per prompt (from
  the lowest to the highest value of its tokens' maps); ``attn/grid``: labelled rows of image |
  concept | class | context.
- ``attn/class_activation``: mean probability of the class word over the subject region: the
  whole image by default (no segmentation is at hand during training); with
  ``subject_region: concept_attention`` the pixels where the concept's map is above its mean.
- ``attn/skl``: symmetric KL divergence between the concept's and the context word's maps, each
  normalised to a distribution over pixels: (KL(P||Q) + KL(Q||P)) / 2.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from callbacks.analysis import AnalysisCallback
from callbacks.attention_capture import AttentionCapture
from callbacks.context_prompts import check_context_prompts
from callbacks.render import heatmap_overlay, labelled_grid
from callbacks.token_positions import concept_token_ids, find_positions, word_token_ids
from core.images import make_grid
from generation.evaluation import preview_steps
from models.base import PersonalizationModule
from step.encoding import TextEncoding

DEFAULT_ATTENTION_PROMPTS: dict[str, str] = {
    "a {} on the beach": "beach",
    "a {} in the jungle": "jungle",
}


def symmetric_kl(first: torch.Tensor, second: torch.Tensor, eps: float = 1e-12) -> float:
    """(KL(P||Q) + KL(Q||P)) / 2 of two non-negative maps, each normalised to sum to 1."""
    p = first.flatten().double().clamp(min=eps)
    q = second.flatten().double().clamp(min=eps)
    p, q = p / p.sum(), q / q.sum()
    return float(0.5 * (p * (p / q).log()).sum() + 0.5 * (q * (q / p).log()).sum())


def subject_mask(concept_map: torch.Tensor) -> torch.Tensor:
    """Pixels where the concept attends above its own mean: a segmentation-free subject region."""
    return concept_map >= concept_map.mean()


def region_mean(values: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Mean of a map over a boolean region (the whole map when there is no mask)."""
    return float(values.float().mean() if mask is None else values.float()[mask].mean())


class AttentionMaps(AnalysisCallback):
    """Logs heat maps and ``attn/class_activation``, ``attn/skl``; see the module docs."""

    name = "attn"

    def __init__(
        self,
        every_n_steps: int = 100,
        prompts: dict[str, str] | None = None,
        resolution: int = 16,
        num_inference_steps: int = 25,
        guidance_scale: float = 6.0,
        seed: int = 0,
        subject_region: Literal["image", "concept_attention"] = "image",
        display_size: int = 128,
        concept_index: int = 0,
        source: Literal["generation", "noisy_latent"] = "generation",
        timestep: int | None = None,
    ) -> None:
        """
        Args:
            every_n_steps: interval in optimizer steps (also at step 0 and at the end).
            prompts: template -> context word; "{}" takes the concept phrase ("<v1> dog").
            resolution: side of the grid the maps are averaged on (16, as in the papers).
            num_inference_steps, guidance_scale, seed: the fixed generation the maps come from.
            subject_region: where ``attn/class_activation`` averages (see the module docs).
            display_size: heat-map images are enlarged to at least this side for viewing.
            concept_index: which concept of a multi-concept module to follow.
            source: where the maps come from. ``"generation"``: a fixed-seed generation of
                ``num_inference_steps`` steps with guidance, maps averaged over its steps, shown
                over the generated images. ``"noisy_latent"``: ONE conditional UNet call on a
                fixed noisy latent: the concept's first instance image (the DataModule's
                ``reference_images``) encoded by the VAE and noised with ``seed`` at
                ``timestep``, shown over that image; without a DataModule that has images, a
                ``seed``-ed random latent, shown over the decoded denoised estimate. About
                ``2 * num_inference_steps`` times cheaper (no guidance, no sampling loop).
            timestep: the noise level of ``"noisy_latent"`` (None: the middle of the training
                schedule).
        """
        super().__init__(every_n_steps)
        if source not in ("generation", "noisy_latent"):
            raise ValueError(f"source must be 'generation' or 'noisy_latent', got {source!r}.")
        if subject_region not in ("image", "concept_attention"):
            raise ValueError(
                f"subject_region must be 'image' or 'concept_attention', got {subject_region!r}."
            )
        self.prompts = check_context_prompts(prompts or DEFAULT_ATTENTION_PROMPTS)
        self.resolution = resolution
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.seed = seed
        self.subject_region = subject_region
        self.display_size = display_size
        self.concept_index = concept_index
        self.source = source
        self.timestep = timestep
        self._clean_latent: tuple[Any, torch.Tensor, torch.Tensor | None] | None = None
        self._image_label = "generated"

    def token_maps(
        self, module: PersonalizationModule, trainer: Any = None
    ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        """Run the prompts under capture; images and, per prompt, maps by token name."""
        concept = module.concepts[self.concept_index]
        templates = list(self.prompts)
        prompts = [t.format(concept.phrase) for t in templates]
        if self.source == "noisy_latent":
            encoding = module.encode_text(prompts)
            with AttentionCapture(module.unet, self.resolution, module.family) as capture:
                images = self._noisy_latent_call(module, trainer, encoding)
            maps = capture.maps  # conditional rows only
        else:
            with AttentionCapture(module.unet, self.resolution, module.family) as capture:
                images = module.generate(
                    prompts,
                    seed=self.seed,
                    num_inference_steps=preview_steps(module, self.num_inference_steps),
                    guidance_scale=self.guidance_scale,
                )
            maps = capture.maps[-len(prompts) :]  # guidance puts the unconditional rows first
            encoding = module.encode_text(prompts)
            self._image_label = "generated"
        # The ids of the tokens the maps are over (FLUX's joint attention reads T5's).
        tokenizers = [getattr(module, name) for name in module.family.tokenizer_names]
        ids = module.family.attended_ids(encoding.input_ids, tokenizers).tolist()
        tokenizer = module.family.attended_tokenizer(tokenizers)
        concept_ids = concept_token_ids(module, self.concept_index, tokenizer)
        class_ids = word_token_ids(module, concept.class_word, tokenizer)
        per_prompt = []
        for row, template in enumerate(templates):
            word = self.prompts[template]
            at_concept = find_positions(ids[row], concept_ids, f"Concept {concept.token!r}")
            # The class word right after the concept token, not an earlier use of the word.
            at_class = find_positions(
                ids[row], class_ids, f"Class word {concept.class_word!r}", at_concept[-1] + 1
            )
            word_ids = word_token_ids(module, word, tokenizer)
            at_word = find_positions(ids[row], word_ids, f"Word {word!r}")
            per_prompt.append(
                {
                    concept.token: maps[row, at_concept].sum(dim=0),
                    concept.class_word: maps[row, at_class].sum(dim=0),
                    word: maps[row, at_word].sum(dim=0),
                }
            )
        return images, per_prompt

    def _reference_image(self, trainer: Any, size: int) -> torch.Tensor | None:
        """The concept's first instance image, (1, 3, size, size) in [0, 1], if there is one."""
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "reference_images"):
            return None
        references = datamodule.reference_images(self.concept_index)
        if not references:
            return None
        image = ImageOps.fit(references[0].convert("RGB"), (size, size), Image.Resampling.BICUBIC)
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]

    def _clean(self, module: PersonalizationModule, trainer: Any) -> tuple[torch.Tensor, Any]:
        """(latent, image or None), computed once: the VAE is frozen and the image fixed."""
        key = (id(module.vae), id(getattr(trainer, "datamodule", None)), module.device)
        if self._clean_latent is None or self._clean_latent[0] != key:
            size = module.family.default_resolution(module.unet, module.vae)
            image = self._reference_image(trainer, size)
            if image is not None:
                pixels = (2 * image - 1).to(module.device, module.vae.dtype)
                latent = module.vae.encode(pixels).latent_dist.mean
                latent = module.family.scale_latents(module.vae, latent)
            else:
                generator = torch.Generator().manual_seed(self.seed)
                channels = module.family.latent_channels(module.unet)
                side = size // module.vae_scale_factor
                latent = torch.randn((1, channels, side, side), generator=generator)
            self._clean_latent = (key, latent.float().cpu(), image)
        return self._clean_latent[1], self._clean_latent[2]

    def _noisy_latent_call(
        self, module: PersonalizationModule, trainer: Any, encoding: TextEncoding
    ) -> torch.Tensor:
        """One conditional UNet call on the fixed noisy latent; the images to overlay.
        ``encoding`` whole: a family with pooled text (SDXL) conditions on more than states."""
        conditioning = encoding.conditioning
        latent, image = self._clean(module, trainer)
        scheduler = module.noise_scheduler
        step = scheduler.config.num_train_timesteps // 2 if self.timestep is None else self.timestep
        timesteps = torch.tensor([step])
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(self.seed))
        if image is None:
            noisy = latent
        else:
            noisy = module.family.noised_and_target(scheduler, latent, noise, timesteps)[0]
        count = conditioning.shape[0]
        dtype, device = conditioning.dtype, conditioning.device
        prediction = module.predict_noise(
            noisy.to(device, dtype).expand(count, -1, -1, -1),
            timesteps.to(device).expand(count),
            encoding,
        )
        if image is not None:
            self._image_label = "instance"
            return image.expand(count, -1, -1, -1)
        self._image_label = "estimate"
        # No instance image: show what the model makes of the latent (its clean estimate).
        noisy = noisy.to(device, torch.float32)
        estimate = module.family.clean_estimate(
            scheduler, noisy, prediction[:1].float(), timesteps.to(device)
        )
        vae = module.vae
        decoded = vae.decode(module.family.unscale_latents(vae, estimate).to(vae.dtype)).sample
        return ((decoded.float() + 1) / 2).clamp(0, 1).cpu().expand(count, -1, -1, -1)

    def measure(
        self, trainer: L.Trainer, module: PersonalizationModule, step: int
    ) -> dict[str, float]:
        concept = module.concepts[self.concept_index]
        images, per_prompt = self.token_maps(module, trainer)
        activations, divergences = [], []
        for maps, word in zip(per_prompt, self.prompts.values()):
            concept_map = maps[concept.token]
            mask = subject_mask(concept_map) if self.subject_region == "concept_attention" else None
            activations.append(region_mean(maps[concept.class_word], mask))
            divergences.append(symmetric_kl(concept_map, maps[word]))
        prompts = [t.format(concept.phrase) for t in self.prompts]
        self._log_heat_maps(trainer, prompts, images, per_prompt, step)
        return {
            f"{self.name}/class_activation": sum(activations) / len(activations),
            f"{self.name}/skl": sum(divergences) / len(divergences),
        }

    def _log_heat_maps(
        self,
        trainer: L.Trainer,
        prompts: list[str],
        images: torch.Tensor,
        per_prompt: list[dict[str, torch.Tensor]],
        step: int,
    ) -> None:
        size = max(self.display_size, images.shape[-1])
        plain = F.interpolate(images.float().cpu(), size=(size, size), mode="nearest")
        overlays = []
        for image, maps in zip(images.cpu(), per_prompt):
            # One colour scale per prompt (its tokens' lowest to highest value): a token the
            # image hardly attends to shows as weak, as ClassDiffusion's fading class token does.
            stacked = torch.stack(list(maps.values()))
            limits = (float(stacked.min()), float(stacked.max()))
            overlays.append(
                {
                    name: heatmap_overlay(image, heat, limits, size=size)
                    for name, heat in maps.items()
                }
            )
        for name in dict.fromkeys(name for row in overlays for name in row):
            panels = torch.stack([row[name] for row in overlays if name in row])
            self.log_image(trainer, f"{self.name}/{name}", make_grid(panels), step)
        rows = [
            [(self._image_label, image), *row.items()] for image, row in zip(plain, overlays)
        ]
        self.log_image(trainer, f"{self.name}/grid", labelled_grid(rows, prompts), step)

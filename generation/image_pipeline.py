"""The module as the image maker the DataModule's preparation asks for (preparation/
model_images.py ``ImagePipeline``): the still untrained base model samples class images and
CLIF's general concepts before training, each rank its share."""

from __future__ import annotations

from typing import Any

import torch

# diffusers' DreamBooth script samples class images with the pipeline's defaults (the step
# count, 50 there, is the DataModule's class_images.generation_steps).
GUIDANCE_SCALE = 7.5


class ModuleImagePipeline:
    """``generate(prompts, seeds, resolution, steps)`` with the module, in eval mode, on the
    trainer's device and precision; ``rank``, ``world_size`` and ``barrier`` from its trainer."""

    def __init__(self, module: Any) -> None:
        self.module = module
        self.trainer = module.trainer
        self.rank = self.trainer.global_rank
        self.world_size = self.trainer.world_size

    def barrier(self) -> None:
        self.trainer.strategy.barrier("model_images")

    def generate(
        self, prompts: list[str], seeds: list[int], resolution: int, steps: int
    ) -> torch.Tensor:
        module = self.module
        module.check_resolution(resolution)
        # Setup runs before Lightning moves the model, so move it now rather than sample on CPU.
        module.to(self.trainer.strategy.root_device)
        was_training = module.training
        module.eval()
        try:
            with self.trainer.precision_plugin.forward_context():
                return module.generate(
                    prompts,
                    seeds=seeds,
                    resolution=resolution,
                    num_inference_steps=steps,
                    guidance_scale=GUIDANCE_SCALE,
                )
        finally:
            module.train(was_training)

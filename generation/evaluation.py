"""The test and predict stages of every baseline: generate the evaluation prompts, score them.

``python train.py test`` generates the DataModule's evaluation prompts (DreamBench's by default)
with fixed seeds, scores the images with the metrics of ``evaluation.metrics`` against the
subject's instance photos, logs ``test/<metric>`` to TensorBoard and writes, under a new
``<run folder>/eval/test-<n>/`` per call: ``images/``, ``manifest.csv`` (file, prompt, seed,
...), ``results.json`` (values, every metric's definition, the generation settings, timings)
and ``results.csv``. A multi-concept prompt set ("a {0} and a {1} on the beach") adds the
named concepts to each manifest row (``concepts``, indices "0 1") and scores CLIP-I, DINO-I,
DINO-FG and Gram-D against each concept's own photos: ``<metric>_c<i>`` per concept i and
their mean as ``<metric>`` (metrics/per_concept.py). ``predict`` generates the same way into
``eval/predict-<n>/`` without scoring. With ``--ckpt_path`` of a run, the run folder is that
run's (train.py). Under DDP each rank generates its share and updates its metric states; files
come from rank zero after gathering the images.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from core.run_config import next_numbered
from generation import concept_scores
from generation.concept_scores import CONCEPTS_FIELD
from generation.schedulers import check_scheduler_name
from metrics.images import quantize, to_pil, to_uint8
from metrics.settings import MetricSettings

MANIFEST_FIELDS = ("file", "prompt", "score_prompt", "prompt_index", "image_index", "seed")


def preview_steps(module: Any, wanted: int) -> int:
    """A callback's sampling steps under the module's ``evaluation.preview_steps`` cap."""
    settings = getattr(module, "evaluation", None)
    cap = getattr(settings, "preview_steps", None)
    return wanted if cap is None else min(wanted, cap)


@dataclass
class EvaluationSettings:
    """How ``test`` / ``predict`` generate, and what ``test`` scores (model option
    ``evaluation``; the prompts and seeds are the DataModule's ``eval_prompts``).

    Attributes:
        scheduler: sampler name (ddim, ddpm, pndm, euler, euler_ancestral, dpm_solver, unipc;
            flow_match_euler for FLUX); None: the model's own (DDIM; FLUX's flow-matching
            Euler).
        num_inference_steps: sampling steps.
        guidance_scale: classifier-free guidance.
        resolution: image side; None = the model's native size.
        negative_prompt: the unconditional prompt of guidance.
        output_dir: where images and results go; None = a new ``<run folder>/eval/test-<n>``
            (or ``predict-<n>``) for each call.
        metrics: which metrics, with which models (see metrics/settings.py).
        preview_steps: caps the sampling steps of the training callbacks' previews
            (SampleImages, AttentionMaps); None: as each callback says. The tiny overlay
            sets 2, so a smoke run's time goes to its training steps.
    """

    scheduler: str | None = None
    num_inference_steps: int = 50
    guidance_scale: float = 6.0
    resolution: int | None = None
    negative_prompt: str = ""
    output_dir: str | None = None
    metrics: MetricSettings = field(default_factory=MetricSettings)
    preview_steps: int | None = None

    def __post_init__(self) -> None:
        if self.scheduler is not None:
            check_scheduler_name(self.scheduler)
        if self.preview_steps is not None and self.preview_steps < 1:
            raise ValueError(f"preview_steps must be >= 1 (or null), got {self.preview_steps}.")
        if self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}.")
        if isinstance(self.metrics, dict):  # built from plain YAML outside the CLI
            self.metrics = MetricSettings(**self.metrics)


def _gather(obj: Any) -> list[Any]:
    """Every rank's `obj` (a list with one entry outside DDP)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def _write_csv(path: Path, rows: list[dict[str, Any]], fields: list[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


class EvaluationMixin:
    """``test_step`` / ``predict_step`` and their epoch ends, for `PersonalizationModule`.

    Mixed into the LightningModule, so ``self.trainer``, ``self.log``, ``self.device``,
    ``self.generate`` and ``self.concepts`` are the module's.
    """

    evaluation: EvaluationSettings

    # ----- generation shared by test and predict ----------------------------------------------
    def _start_stage(self) -> None:
        # What the command line reports at the end (rank zero's files).
        self.eval_output_folder: Path | None = None
        self.eval_results_file: Path | None = None
        self._eval_rows: list[dict[str, Any]] = []
        self._eval_images: list[torch.Tensor] = []  # uint8 (B, 3, H, W) on the CPU
        self._eval_timing: dict[str, float] = {"generation": 0.0, "metric_setup": 0.0}
        self._eval_metrics: dict[str, Any] = {}

    def _generate_batch(self, batch: dict[str, Any]) -> torch.Tensor:
        """Generate the batch's prompts with their seeds; keep the 8-bit images and rows."""
        settings = self.evaluation
        start = time.perf_counter()
        images = self.generate(
            list(batch["prompt"]),
            seeds=[int(s) for s in batch["seed"]],
            num_inference_steps=settings.num_inference_steps,
            guidance_scale=settings.guidance_scale,
            resolution=settings.resolution,
            negative_prompt=settings.negative_prompt,
            scheduler=settings.scheduler,
        )
        self._eval_timing["generation"] += time.perf_counter() - start
        self._eval_images.append(to_uint8(images).cpu())
        fields = [k for k in (*MANIFEST_FIELDS, CONCEPTS_FIELD) if k in batch]
        for i in range(len(batch["prompt"])):
            self._eval_rows.append({k: _item(batch[k][i]) for k in fields})
        return quantize(images)

    # ----- test -------------------------------------------------------------------------------
    def on_test_start(self) -> None:
        """Load the metrics and encode the references before generating anything."""
        from metrics.suite import build_metrics  # the evaluation models' code, only when testing

        self._start_stage()
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "reference_images"):
            raise RuntimeError(
                "test needs the PersonalizationDataModule: its instance images are the "
                "references of CLIP-I / DINO-I (trainer.test(model, datamodule=...))."
            )
        start = time.perf_counter()
        named = getattr(datamodule, "eval_concepts", None)  # None: a single-concept set
        self._eval_metrics = build_metrics(self.evaluation.metrics, named)
        with torch.autocast(self.device.type, enabled=False):
            for metric in self._eval_metrics.values():
                metric.to(self.device)
            concept_scores.set_references(self._eval_metrics, datamodule, self.concepts, named)
        self._eval_timing["metric_setup"] = time.perf_counter() - start

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        images = self._generate_batch(batch)
        with torch.autocast(self.device.type, enabled=False):
            for key, metric in self._eval_metrics.items():
                start = time.perf_counter()
                concept_scores.update(metric, images, batch)
                self._eval_timing[key] = (
                    self._eval_timing.get(key, 0.0) + time.perf_counter() - start
                )

    def on_test_epoch_end(self) -> None:
        values = concept_scores.compute(self._eval_metrics)  # syncs
        for key, value in values.items():
            self.log(f"test/{key}", value.float(), sync_dist=False)
        folder = self._write_generations("test")
        if folder is not None:
            self._write_results(folder, {k: float(v) for k, v in values.items()})
        for metric in self._eval_metrics.values():
            metric.reset()

    def on_test_end(self) -> None:
        """Give the accelerator back to training: the (shared, cached) models go to the CPU."""
        for metric in self._eval_metrics.values():
            metric.cpu()
        self._eval_metrics = {}

    # ----- predict ----------------------------------------------------------------------------
    def on_predict_start(self) -> None:
        self._start_stage()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Images in [0, 1] (also written under ``predict/`` at the end of the epoch)."""
        return self._generate_batch(batch)

    def on_predict_epoch_end(self) -> None:
        self._write_generations("predict")

    # ----- files (rank zero) ------------------------------------------------------------------
    def _output_folder(self, stage: str) -> Path:
        """``output_dir``, else a new ``<run folder>/eval/<stage>-<n>`` for each call."""
        if self.evaluation.output_dir:
            return Path(self.evaluation.output_dir)
        trainer = self.trainer
        base = Path(trainer.log_dir or trainer.default_root_dir) / "eval"
        # Rank zero picks; the others must not race it.
        name = next_numbered(base, stage).name if trainer.is_global_zero else None
        return base / trainer.strategy.broadcast(name)

    def _write_generations(self, stage: str) -> Path | None:
        """Gather every rank's images and rows; rank zero writes images/ and manifest.csv."""
        images = torch.cat(self._eval_images) if self._eval_images else None
        shards = _gather((self._eval_rows, images, dict(self._eval_timing)))
        folder = self._output_folder(stage)  # on every rank: log_dir and the name broadcast
        if not self.trainer.is_global_zero:
            return None
        (folder / "images").mkdir(parents=True, exist_ok=True)
        rows: list[dict[str, Any]] = []
        for shard_rows, shard_images, _ in shards:
            for row, image in zip(
                shard_rows, to_pil(shard_images) if shard_images is not None else []
            ):
                name = f"p{row['prompt_index']:03d}_i{row['image_index']:02d}.png"
                image.save(folder / "images" / name)
                rows.append({"file": f"images/{name}", **row})
        rows.sort(key=lambda r: (r["prompt_index"], r["image_index"]))
        fields = [
            *MANIFEST_FIELDS,
            *([CONCEPTS_FIELD] if any(CONCEPTS_FIELD in r for r in rows) else []),
        ]
        _write_csv(folder / "manifest.csv", rows, fields)
        self._eval_shard_timing = [timing for _, _, timing in shards]
        self._eval_row_count = len(rows)
        self._log_grid(shards)
        self.eval_output_folder = folder
        return folder

    def _log_grid(self, shards: list[Any]) -> None:
        """The first image of each prompt, as one TensorBoard grid."""
        from lightning.pytorch.loggers import TensorBoardLogger

        from core.images import make_grid

        firsts = [
            image
            for rows, images, _ in shards
            if images is not None
            for row, image in zip(rows, images)
            if row["image_index"] == 0
        ]
        loggers = [lg for lg in self.trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if firsts and loggers:
            grid = make_grid(torch.stack(firsts).float() / 255, columns=5)
            for logger in loggers:
                logger.experiment.add_image("test/samples", grid, self.global_step)

    def _write_results(self, folder: Path, values: dict[str, float]) -> None:
        """results.json (values, definitions, settings, timings) and a one-row results.csv."""
        trainer = self.trainer
        datamodule = trainer.datamodule
        concept = self.concepts[0]
        timing = self._eval_shard_timing
        images = self._eval_row_count
        generation_seconds = sum(t["generation"] for t in timing)
        metric_seconds = {
            key: sum(t.get(key, 0.0) for t in timing) / max(images, 1) for key in self._eval_metrics
        }
        settings = asdict(self.evaluation)
        settings.pop("metrics")
        results = {
            "method": type(self).__name__,
            "metrics": values,
            "definitions": {k: m.definition() for k, m in self._eval_metrics.items()},
            "generation": {
                **settings,
                "model": getattr(self, "pretrained_model_name_or_path", None),
                "checkpoint": str(trainer.ckpt_path) if trainer.ckpt_path else None,
                "precision": str(trainer.precision),
            },
            "prompts": {
                "set": datamodule.eval_prompt_set,
                "num_prompts": len(datamodule.eval_templates),
                **asdict(datamodule.eval_prompts),
                "num_images": images,
            },
            "concept": {
                "token": concept.token,
                "class_word": concept.class_word,
                "num_reference_images": len(datamodule.reference_images(0)),
            },
            **concept_scores.concepts_record(datamodule, self.concepts),
            "timing": {
                "world_size": trainer.world_size,
                "generation_seconds": generation_seconds,
                # Per process: seconds are summed over the ranks.
                "images_per_second": images / generation_seconds if generation_seconds else None,
                "metric_seconds_per_image": metric_seconds,
                "metric_setup_seconds": self._eval_timing["metric_setup"],  # load + references
            },
        }
        (folder / "results.json").write_text(json.dumps(results, indent=2))
        self.eval_results_file = folder / "results.json"
        _write_csv(
            folder / "results.csv", [{"method": results["method"], **values}], ["method", *values]
        )


def _item(value: Any) -> Any:
    """A collated batch entry back to a plain Python value."""
    return value.item() if isinstance(value, torch.Tensor) else value

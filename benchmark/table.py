"""The papers' table: one row per method, one column per metric, the mean over subjects.

With seeds as an axis, each seed's mean over subjects is one measurement of the method, and the
table gives their mean ± standard deviation (n - 1) over the seeds.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any

from benchmark.pair import Method, Pair, results_file
from benchmark.subjects import Subject
from metrics.settings import ALL_METRICS

LABELS = {
    "clip_t": "CLIP-T ↑", "clip_i": "CLIP-I ↑", "dino_i": "DINO-I ↑", "blip_t": "BLIP-T ↑",
    "dino_fg": "DINO-FG ↑", "gram_d": "Gram-D ↓", "face_sim": "Face-Sim ↑",
    "face_sim_missing": "no face found",
}  # fmt: skip
NOT_METRICS = ("method", "subject", "seed")


def collect(
    output: Path, methods: list[Method], subjects: list[Subject], seeds: list[int] | None = None
) -> list[dict[str, Any]]:
    """One row per finished pair: method, subject, seed (with seeds), each metric's value."""
    rows = []
    for method in methods:
        for subject in subjects:
            for seed in seeds or [None]:
                path = results_file(output, Pair(method, subject, seed))
                if path.is_file():
                    values = json.loads(path.read_text())["metrics"]
                    axis = {} if seed is None else {"seed": seed}
                    rows.append({"method": method.name, "subject": subject.name, **axis, **values})
    return rows


def metric_keys(rows: list[dict[str, Any]]) -> list[str]:
    present = {key for row in rows for key in row if key not in NOT_METRICS}
    return [key for key in ALL_METRICS if key in present] + sorted(present - set(ALL_METRICS))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def summarize(
    rows: list[dict[str, Any]],
    methods: list[Method],
    num_subjects: int,
    seeds: list[int] | None = None,
) -> list[dict[str, Any]]:
    """Per method: each metric's mean over its finished subjects (with seeds: the mean and
    ``<metric>_std`` over the seeds' means), and how many runs finished."""
    keys = metric_keys(rows)
    table = []
    for method in methods:
        mine = [row for row in rows if row["method"] == method.name]
        entry: dict[str, Any] = {"method": method.name}
        stds: dict[str, float] = {}
        for key in keys:
            if seeds is None:
                entry[key] = _mean([r[key] for r in mine if r.get(key) is not None])
                continue
            per_seed = [
                _mean([r[key] for r in mine if r["seed"] == seed and r.get(key) is not None])
                for seed in seeds
            ]
            measured = [value for value in per_seed if not math.isnan(value)]
            entry[key] = _mean(measured)
            stds[f"{key}_std"] = statistics.stdev(measured) if len(measured) > 1 else math.nan
        entry.update(stds)
        entry["subjects"] = f"{len(mine)}/{num_subjects * len(seeds or [None])}"
        if seeds is not None:
            entry["seeds"] = len({row["seed"] for row in mine})
        table.append(entry)
    return table


def _format(value: Any) -> str:
    if not isinstance(value, float):
        return str(value)
    if math.isnan(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}" if abs(value) >= 0.01 or value == 0 else f"{value:.3g}"


def _cell(row: dict[str, Any], key: str) -> str:
    std = row.get(f"{key}_std")
    if std is None or math.isnan(std) or math.isnan(row[key]):
        return _format(row[key])
    return f"{_format(row[key])} ± {_format(std)}"


def write_table(
    output: Path, methods: list[Method], subjects: list[Subject], seeds: list[int] | None = None
) -> list[Path]:
    """table.md and table.csv (means; ± std over seeds), results_per_subject.csv (every run)."""
    rows = collect(output, methods, subjects, seeds)
    keys = metric_keys(rows)
    table = summarize(rows, methods, len(subjects), seeds)
    output.mkdir(parents=True, exist_ok=True)
    counts = ["subjects"] if seeds is None else ["subjects", "seeds"]
    header = ["Method", *(LABELS.get(k, k) for k in keys), *(c.capitalize() for c in counts)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table:
        cells = [row["method"], *(_cell(row, k) for k in keys), *(str(row[c]) for c in counts)]
        lines.append("| " + " | ".join(cells) + " |")
    (output / "table.md").write_text("\n".join(lines) + "\n")
    stds = [] if seeds is None else [f"{key}_std" for key in keys]
    with (output / "table.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["method", *keys, *stds, *counts])
        writer.writeheader()
        writer.writerows(table)
    axis = [] if seeds is None else ["seed"]
    with (output / "results_per_subject.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["method", "subject", *axis, *keys])
        writer.writeheader()
        writer.writerows(rows)
    return [output / "table.md", output / "table.csv", output / "results_per_subject.csv"]

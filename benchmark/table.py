"""The papers' table: one row per method, one column per metric, the mean over subjects."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from benchmark.pair import Method, results_file
from benchmark.subjects import Subject
from metrics.settings import ALL_METRICS

LABELS = {
    "clip_t": "CLIP-T ↑", "clip_i": "CLIP-I ↑", "dino_i": "DINO-I ↑", "blip_t": "BLIP-T ↑",
    "dino_fg": "DINO-FG ↑", "gram_d": "Gram-D ↓",
}  # fmt: skip


def collect(output: Path, methods: list[Method], subjects: list[Subject]) -> list[dict[str, Any]]:
    """One row per finished pair: method, subject, and each metric's value."""
    rows = []
    for method in methods:
        for subject in subjects:
            path = results_file(output, method, subject)
            if path.is_file():
                values = json.loads(path.read_text())["metrics"]
                rows.append({"method": method.name, "subject": subject.name, **values})
    return rows


def metric_keys(rows: list[dict[str, Any]]) -> list[str]:
    present = {key for row in rows for key in row if key not in ("method", "subject")}
    return [key for key in ALL_METRICS if key in present] + sorted(present - set(ALL_METRICS))


def summarize(
    rows: list[dict[str, Any]], methods: list[Method], num_subjects: int
) -> list[dict[str, Any]]:
    """Per method: the mean of each metric over its finished subjects, and how many finished."""
    keys = metric_keys(rows)
    table = []
    for method in methods:
        mine = [row for row in rows if row["method"] == method.name]
        means = {}
        for key in keys:
            values = [row[key] for row in mine if key in row and row[key] is not None]
            means[key] = sum(values) / len(values) if values else math.nan
        table.append({"method": method.name, **means, "subjects": f"{len(mine)}/{num_subjects}"})
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


def write_table(output: Path, methods: list[Method], subjects: list[Subject]) -> list[Path]:
    """table.md and table.csv (means), results_per_subject.csv (every finished pair)."""
    rows = collect(output, methods, subjects)
    keys = metric_keys(rows)
    table = summarize(rows, methods, len(subjects))
    output.mkdir(parents=True, exist_ok=True)
    header = ["Method", *(LABELS.get(k, k) for k in keys), "Subjects"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table:
        cells = [row["method"], *(_format(row[k]) for k in keys), row["subjects"]]
        lines.append("| " + " | ".join(cells) + " |")
    (output / "table.md").write_text("\n".join(lines) + "\n")
    with (output / "table.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["method", *keys, "subjects"])
        writer.writeheader()
        writer.writerows(table)
    with (output / "results_per_subject.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["method", "subject", *keys])
        writer.writeheader()
        writer.writerows(rows)
    return [output / "table.md", output / "table.csv", output / "results_per_subject.csv"]

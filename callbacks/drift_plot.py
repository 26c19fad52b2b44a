"""The t-SNE figure of `SemanticDrift`: phrases in grey, concept, class phrase, class centre.

Every point is labelled where it lies (no legend: its layout costs more than the rest of the
figure), the labels written with PIL after matplotlib draws the points (~75 matplotlib text
artists would take most of the drawing time). The figure is built once per callback and
redrawn with each measurement's points: a fresh figure each time costs twice as much.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from callbacks.render import PointLabels, figure_to_array_with_labels

RED, BLUE, BLACK, GREY = (214, 39, 40), (31, 119, 180), (0, 0, 0), (115, 115, 115)


def drift_labels(
    plane: np.ndarray, adjectives: Sequence[str], concept_phrase: str, class_phrase: str
) -> list[PointLabels]:
    """The texts beside the points: each adjective (grey), the concept phrase (red), the
    class phrase (blue) and the class centre (black). Row order of ``plane``: adjectives,
    concept, class phrase, class centre."""
    count = len(adjectives)
    return [
        PointLabels(plane[:count], list(adjectives), GREY, 6.0),
        PointLabels(plane[count : count + 1], [concept_phrase], RED, 8.0),
        PointLabels(plane[count + 1 : count + 2], [class_phrase], BLUE, 8.0),
        PointLabels(plane[count + 2 : count + 3], ["class centre"], BLACK, 8.0),
    ]


class DriftPlot:
    """One matplotlib figure (540 px: labels readable, no more pixels to draw and encode)."""

    def __init__(self, num_adjectives: int) -> None:
        self.count = num_adjectives
        self.figure = Figure(figsize=(6, 6), dpi=90)
        self.canvas = FigureCanvasAgg(self.figure)
        self.axes = self.figure.add_subplot()
        empty = np.zeros((1, 2))
        self.points = [
            self.axes.scatter(*empty.T, s=14, c="0.6"),
            self.axes.scatter(*empty.T, marker="*", c="tab:red", s=260, zorder=3),
            self.axes.scatter(*empty.T, marker="s", c="tab:blue", s=90, zorder=3),
            self.axes.scatter(*empty.T, marker="X", c="black", s=140, zorder=3),
        ]
        self.title = self.axes.set_title("", fontsize=9)
        self.axes.set_xticks([])
        self.axes.set_yticks([])
        self.axes.margins(x=0.12, y=0.05)  # room for the labels of the outermost points
        self.figure.subplots_adjust(left=0.02, right=0.98, top=0.9, bottom=0.02)

    def show(self, plane: np.ndarray, class_phrase: str, title: str) -> None:
        """Move the points to ``plane`` (rows: adjectives, concept, class phrase, centre)."""
        if len(plane) != self.count + 3:
            raise ValueError(f"Expected {self.count + 3} points, got {len(plane)}.")
        rows = (slice(0, self.count), *(slice(i, i + 1) for i in range(self.count, self.count + 3)))
        for collection, row in zip(self.points, rows):
            collection.set_offsets(plane[row])
        self.axes.ignore_existing_data_limits = True
        self.axes.update_datalim(plane)
        self.axes.autoscale_view()
        key = f"grey: 'a <adjective> {class_phrase.split()[-1]}' phrases; X: their mean"
        self.title.set_text(f"{title}\n{key}")

    def image(
        self,
        plane: np.ndarray,
        adjectives: Sequence[str],
        concept_phrase: str,
        class_phrase: str,
        title: str,
    ) -> np.ndarray:
        """The figure for these points as an (H, W, 3) uint8 array, labels written with PIL."""
        self.show(plane, class_phrase, title)
        labels = drift_labels(plane, adjectives, concept_phrase, class_phrase)
        return figure_to_array_with_labels(self.figure, self.axes, labels)


def drift_figure(
    plane: np.ndarray,
    adjectives: Sequence[str],
    concept_phrase: str,
    class_phrase: str,
    title: str,
    label_points: bool = True,
) -> Figure:
    """A fresh drift figure labelled by matplotlib itself (``axes.annotate``), the reference
    the PIL-labelled `DriftPlot.image` is checked against; ``label_points`` False: no labels."""
    plot = DriftPlot(len(adjectives))
    plot.show(plane, class_phrase, title)
    if label_points:
        for group in drift_labels(plane, adjectives, concept_phrase, class_phrase):
            colour = tuple(c / 255 for c in group.colour)
            for point, text in zip(group.points, group.texts):
                plot.axes.annotate(text, tuple(point), fontsize=group.fontsize, color=colour,
                                   xytext=(2, 2), textcoords="offset points")  # fmt: skip
    return plot.figure


"""Figures of an assessment: per attack, original, amplified perturbation and adversarial image.

Each figure has one column per example and three rows, titled with the class
the model predicts: the original image, the perturbation scaled so that its
largest change fills the gray range, and the adversarial image.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["render_attack_figure", "render_figures", "figure_name"]

logger = logging.getLogger(__name__)


def figure_name(position: int, label: str) -> str:
    """Return the PNG file name of the attack at ``position`` in the report."""
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    return f"{position:02d}-{slug}.png"


def _as_image(values: list[float], shape: list[int]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float32).reshape(shape)
    if array.shape[0] == 1:
        return array[0]
    return np.transpose(array, (1, 2, 0))


def render_attack_figure(
    record: dict[str, Any], class_names: list[str], bounds: tuple[float, float], path: str | Path
) -> Path | None:
    """Write the figure of one attack record; return None when it has no successful example."""
    examples = record.get("examples") or []
    if not examples:
        return None
    low, high = bounds
    columns = len(examples)
    figure, axes = plt.subplots(3, columns, figsize=(2.3 * columns, 7.2), squeeze=False)
    for column, example in enumerate(examples):
        original = _as_image(example["original"], example["shape"])
        adversarial = _as_image(example["adversarial"], example["shape"])
        perturbation = adversarial - original
        scale = float(np.abs(perturbation).max()) or 1.0
        cells = [
            (original, f"original: {class_names[example['clean_prediction']]}", (low, high)),
            (0.5 + perturbation / (2 * scale), f"perturbation x{1 / scale:.1f}", (0.0, 1.0)),
            (adversarial, f"adversarial: {class_names[example['adversarial_prediction']]}", (low, high)),
        ]
        for row, (image, title, (vmin, vmax)) in enumerate(cells):
            axis = axes[row][column]
            if image.ndim == 2:
                axis.imshow(image, cmap="gray", vmin=vmin, vmax=vmax)
            else:
                axis.imshow(np.clip((image - vmin) / (vmax - vmin), 0, 1))
            axis.set_title(title, fontsize=9)
            axis.axis("off")
    figure.suptitle(f"{record['label']}: accuracy under attack {100 * record['accuracy']:.1f}%", fontsize=11)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def render_figures(results: dict[str, Any], directory: str | Path) -> list[Path]:
    """Write one figure per attack into ``directory`` and return their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    class_names = results["data"]["class_names"]
    bounds = tuple(results["data"]["bounds"])
    written = []
    for position, record in enumerate(results["attacks"], start=1):
        path = render_attack_figure(record, class_names, bounds, directory / figure_name(position, record["label"]))
        if path is not None:
            written.append(path)
    return written

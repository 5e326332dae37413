"""Accuracy-under-attack curves against the budget, and median minimal perturbations.

Two kinds of records in ``results.json`` give a curve:

- a sweep: one attack run at several budgets (``pgd:eps=[0.02,0.05,0.1]``),
  whose records share a label up to the ``(eps=...)`` suffix. Each budget is
  one point, and the clean accuracy is the point at 0.
- a minimal-perturbation attack (DeepFool, C&W: records without ``eps``),
  where a sample counts as robust at budget ``e`` when the model classified
  it correctly and the attack failed or needed a perturbation larger than
  ``e`` in the attack's norm.

The median minimal perturbation of such an attack is the median norm over
the samples it attacked, counting a sample it failed on as infinitely
robust, so the median is infinite when the attack fails on half of them.

Everything here reads the plain data of ``results.json``; nothing reruns an
attack.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = [
    "robustness_curves",
    "minimal_perturbations",
    "render_robustness_curves",
    "render_robustness_section",
    "CURVES_FILE",
]

logger = logging.getLogger(__name__)

CURVES_FILE = "robustness-curves.png"
# Budgets at which a minimal-perturbation curve is evaluated, from 0 to just past the largest norm found.
_MINIMAL_POINTS = 101
_SWEEP_SUFFIX = re.compile(r" \(eps=[^)]*\)$")
_NORM_TITLES = {"linf": "L-inf", "l2": "L2", "l0": "L0"}


def _clean_correct(results: dict[str, Any]) -> np.ndarray:
    clean = results["clean"]["per_sample"]
    return np.asarray(clean["label"]) == np.asarray(clean["prediction"])


def robustness_curves(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the accuracy-versus-budget curves that the results contain.

    Returns
    -------
    list of dict
        One per curve: ``label``, ``norm``, ``kind`` (``"sweep"`` or
        ``"minimal"``), and the lists ``eps`` and ``accuracy`` of equal
        length, in increasing ``eps``. Targeted runs are left out, because
        their success is reaching a target, not leaving the label.
    """
    curves: list[dict[str, Any]] = []
    clean_accuracy = float(results["clean"]["accuracy"])
    sweeps: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for record in results.get("attacks", []):
        if record.get("targeted") or record.get("norm") not in _NORM_TITLES:
            continue
        if record.get("eps") is None:
            curve = _minimal_curve(record, results)
            if curve is not None:
                curves.append(curve)
            continue
        key = (_SWEEP_SUFFIX.sub("", record["label"]), record["norm"])
        sweeps.setdefault(key, []).append((float(record["eps"]), float(record["accuracy"])))
    for (label, norm), points in sweeps.items():
        if len(points) < 2:
            continue
        points = sorted(points)
        if points[0][0] > 0:
            points.insert(0, (0.0, clean_accuracy))
        curves.append(
            {
                "label": label,
                "norm": norm,
                "kind": "sweep",
                "eps": [e for e, _ in points],
                "accuracy": [a for _, a in points],
            }
        )
    return curves


def _minimal_norms(record: dict[str, Any], results: dict[str, Any]) -> np.ndarray | None:
    """Return each sample's minimal perturbation: 0 if misclassified already, inf where the attack failed."""
    per_sample = record.get("per_sample") or {}
    norm = record.get("norm")
    if norm not in per_sample or "success" not in per_sample:
        return None
    norms = np.asarray(per_sample[norm], dtype=np.float64)
    success = np.asarray(per_sample["success"], dtype=bool)
    minimal = np.where(success, norms, np.inf)
    minimal[~_clean_correct(results)] = 0.0
    return minimal


def _minimal_curve(record: dict[str, Any], results: dict[str, Any]) -> dict[str, Any] | None:
    minimal = _minimal_norms(record, results)
    if minimal is None or minimal.size == 0:
        return None
    finite = minimal[np.isfinite(minimal)]
    largest = float(finite.max()) if finite.size else 0.0
    if largest <= 0:
        return None
    grid = np.linspace(0.0, 1.05 * largest, _MINIMAL_POINTS)
    # Robust at budget e: the smallest perturbation found is larger than e.
    accuracy = [(minimal > e).mean() for e in grid]
    return {
        "label": record["label"],
        "norm": record["norm"],
        "kind": "minimal",
        "eps": [float(e) for e in grid],
        "accuracy": [float(a) for a in accuracy],
    }


def minimal_perturbations(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the median minimal perturbation of every untargeted attack run without a budget.

    Returns
    -------
    list of dict
        ``label``, ``norm``, ``median`` (float, ``inf`` when the attack failed
        on at least half of the samples it attacked, None when it attacked
        none) and ``attacked`` (samples the model classified correctly).
    """
    rows = []
    correct = _clean_correct(results)
    for record in results.get("attacks", []):
        if record.get("eps") is not None or record.get("targeted") or record.get("norm") not in _NORM_TITLES:
            continue
        minimal = _minimal_norms(record, results)
        if minimal is None:
            continue
        attacked = minimal[correct]
        median = float(np.median(attacked)) if attacked.size else None
        rows.append({"label": record["label"], "norm": record["norm"], "median": median, "attacked": int(attacked.size)})
    return rows


def render_robustness_curves(results: dict[str, Any], path: str | Path) -> Path | None:
    """Write the accuracy-versus-budget figure, one panel per norm; return None when there is no curve."""
    curves = robustness_curves(results)
    if not curves:
        return None
    norms = [norm for norm in _NORM_TITLES if any(c["norm"] == norm for c in curves)]
    figure, axes = plt.subplots(1, len(norms), figsize=(5.5 * len(norms), 4.2), squeeze=False)
    for axis, norm in zip(axes[0], norms):
        for curve in (c for c in curves if c["norm"] == norm):
            eps, accuracy = curve["eps"], [100 * a for a in curve["accuracy"]]
            if curve["kind"] == "sweep":
                axis.plot(eps, accuracy, marker="o", label=curve["label"])
            else:
                axis.plot(eps, accuracy, drawstyle="steps-post", label=f"{curve['label']} (minimal perturbation)")
        axis.set_xlabel(f"budget eps ({_NORM_TITLES[norm]})")
        axis.set_ylabel("accuracy under attack (%)")
        axis.set_ylim(-2, 102)
        axis.set_xlim(left=0)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle("Accuracy under attack against the budget", fontsize=11)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def render_robustness_section(results: dict[str, Any], directory: str | Path) -> str:
    """Write the curve figure into ``directory`` and return the report's Markdown section ("" if empty)."""
    path = render_robustness_curves(results, Path(directory) / CURVES_FILE)
    medians = minimal_perturbations(results)
    if path is None and not medians:
        return ""
    lines = ["", "## Accuracy against the budget", ""]
    if medians:
        lines += [
            "Median minimal perturbation over the samples the model classified correctly; a sample the attack "
            "failed on counts as infinitely robust.",
            "",
            "| attack | norm | median minimal perturbation | samples |",
            "|---|---|---|---|",
        ]
        for row in medians:
            median = row["median"]
            if median is None:
                text = "-"
            elif math.isinf(median):
                text = "not reached"
            else:
                text = f"{median:.4f}"
            lines.append(f"| {row['label']} | {_NORM_TITLES[row['norm']]} | {text} | {row['attacked']} |")
        lines.append("")
    if path is not None:
        lines += [f"![Accuracy under attack against the budget]({path.name})", ""]
    return "\n".join(lines)

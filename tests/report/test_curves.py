"""Accuracy-versus-budget curves and median minimal perturbations, from results data alone."""

from __future__ import annotations

import math

import pytest

from mlwarden.report.curves import (
    CURVES_FILE,
    minimal_perturbations,
    render_robustness_curves,
    render_robustness_section,
    robustness_curves,
)


def sweep_record(eps: float, accuracy: float) -> dict:
    return {
        "name": "pgd",
        "label": f"pgd:eps=[0.01,0.03,0.1] (eps={eps:g})",
        "eps": eps,
        "norm": "linf",
        "targeted": False,
        "accuracy": accuracy,
        "per_sample": {},
    }


def minimal_record(label: str, success: list[int], l2: list[float], targeted: bool = False) -> dict:
    return {
        "name": label,
        "label": label,
        "eps": None,
        "norm": "l2",
        "targeted": targeted,
        "accuracy": 0.0,
        "per_sample": {"success": success, "l2": l2, "l0": [0.0] * len(l2), "linf": [0.0] * len(l2)},
    }


@pytest.fixture
def results() -> dict:
    # Four samples; the model gets the last one wrong before any attack.
    return {
        "clean": {"accuracy": 0.75, "per_sample": {"label": [0, 1, 2, 3], "prediction": [0, 1, 2, 0]}},
        "attacks": [
            sweep_record(0.1, 0.0),
            sweep_record(0.01, 0.5),
            sweep_record(0.03, 0.25),
            minimal_record("deepfool", [1, 1, 0, 1], [0.2, 0.6, 0.0, 0.0]),
            minimal_record("cw", [1, 1, 1, 1], [0.1, 0.3, 0.5, 0.0]),
            minimal_record("cw-targeted", [1, 1, 1, 1], [0.1, 0.3, 0.5, 0.0], targeted=True),
        ],
    }


def test_sweep_curve_sorted_from_clean(results):
    sweep = next(c for c in robustness_curves(results) if c["kind"] == "sweep")
    assert sweep["label"] == "pgd:eps=[0.01,0.03,0.1]"
    assert sweep["eps"] == [0.0, 0.01, 0.03, 0.1]
    assert sweep["accuracy"] == [0.75, 0.5, 0.25, 0.0]


def test_minimal_curve_counts_robust_samples(results):
    deepfool = next(c for c in robustness_curves(results) if c["label"] == "deepfool")
    at = dict(zip(deepfool["eps"], deepfool["accuracy"]))
    assert at[0.0] == 0.75
    # Past 0.2 the first sample falls; the third is never fooled, the fourth was wrong already.
    assert min(a for e, a in at.items() if e >= 0.6) == 0.25
    assert all(a == 0.5 for e, a in at.items() if 0.2 <= e < 0.6)


def test_targeted_runs_left_out(results):
    labels = [c["label"] for c in robustness_curves(results)]
    assert "cw-targeted" not in labels
    assert "cw-targeted" not in [row["label"] for row in minimal_perturbations(results)]


def test_median_minimal_perturbation(results):
    rows = {row["label"]: row for row in minimal_perturbations(results)}
    assert rows["cw"]["median"] == pytest.approx(0.3)
    assert rows["cw"]["attacked"] == 3
    # DeepFool failed on one of three: the median of (0.2, 0.6, inf) is 0.6.
    assert rows["deepfool"]["median"] == pytest.approx(0.6)


def test_median_infinite_when_mostly_failed(results, tmp_path):
    results["attacks"] = [minimal_record("cw", [0, 0, 1, 1], [0.0, 0.0, 0.4, 0.0])]
    assert math.isinf(minimal_perturbations(results)[0]["median"])
    assert "| cw | L2 | not reached | 3 |" in render_robustness_section(results, tmp_path)


def test_figure_and_section_written(results, tmp_path):
    section = render_robustness_section(results, tmp_path)
    assert (tmp_path / CURVES_FILE).stat().st_size > 0
    assert f"]({CURVES_FILE})" in section
    assert "| deepfool | L2 | 0.6000 | 3 |" in section


def test_nothing_written_without_curves(tmp_path):
    empty = {"clean": {"accuracy": 1.0, "per_sample": {"label": [0], "prediction": [0]}}, "attacks": []}
    assert render_robustness_curves(empty, tmp_path / CURVES_FILE) is None
    assert render_robustness_section(empty, tmp_path) == ""
    assert not (tmp_path / CURVES_FILE).exists()




def test_table_median_is_the_usual_median():
    # The table's median must agree with the median minimal perturbation: with an even count, the
    # mean of the two middle values (torch's own median takes the lower one).
    import torch

    from mlwarden.assess.metrics import _stats

    assert _stats(torch.tensor([0.4, 0.1, 0.3, 0.2]))["median"] == pytest.approx(0.25)
    assert _stats(torch.tensor([0.3, 0.1, 0.2]))["median"] == pytest.approx(0.2)

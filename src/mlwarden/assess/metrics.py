"""Summary figures of an attack result, as stored in ``results.json``."""

from __future__ import annotations

from typing import Any

import torch

from ..attacks.result import AttackResult

__all__ = ["summarize_attack", "per_sample_record", "clean_accuracy"]


def _stats(values: torch.Tensor) -> dict[str, float | None]:
    if values.numel() == 0:
        return {"mean": None, "median": None}
    values = values.to(torch.float64)
    # The usual median: the mean of the two middle values when their count is even (torch's median
    # takes the lower one), as the report's median minimal perturbation does.
    return {"mean": float(values.mean()), "median": float(values.quantile(0.5))}


def clean_accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Return the fraction of correct predictions."""
    return float((predictions == labels).float().mean()) if len(labels) else 0.0


def summarize_attack(result: AttackResult) -> dict[str, Any]:
    """Return the figures of one attack run over the whole data set.

    ``accuracy`` counts every sample; ``success_rate`` counts the samples the
    attack had to work on (those the model classified correctly, or not as
    the target); perturbation norms cover the successful ones of those.
    """
    attacked = result.attacked
    fooled = result.success & attacked
    summary: dict[str, Any] = {
        "samples": len(result),
        "attacked": int(attacked.sum()),
        "successes": int(fooled.sum()),
        "accuracy": result.accuracy,
        "success_rate": result.success_rate,
        "l0": _stats(result.l0[fooled]),
        "l2": _stats(result.l2[fooled]),
        "linf": _stats(result.linf[fooled]),
        "seconds": result.cost.seconds,
        "gradients": result.cost.gradients,
        "queries": result.cost.queries,
        "gradients_per_sample": result.cost.gradients / max(int(attacked.sum()), 1),
    }
    if result.queries_per_sample is not None:
        successful_queries = result.queries_per_sample[fooled]
        summary["queries_per_sample"] = {
            **_stats(result.queries_per_sample[attacked]),
            "median_successful": float(successful_queries.double().median()) if successful_queries.numel() else None,
        }
    return summary


def per_sample_record(result: AttackResult) -> dict[str, list[Any]]:
    """Return per-sample outcomes, so that runs on shards can be merged exactly."""
    record: dict[str, list[Any]] = {
        "prediction": result.predictions.tolist(),
        "success": result.success.int().tolist(),
        "already_adversarial": result.already_adversarial.int().tolist(),
        "l0": [round(v, 6) for v in result.l0.tolist()],
        "l2": [round(v, 6) for v in result.l2.tolist()],
        "linf": [round(v, 6) for v in result.linf.tolist()],
    }
    if result.targets is not None:
        record["target"] = result.targets.tolist()
    if result.queries_per_sample is not None:
        record["queries"] = result.queries_per_sample.tolist()
    return record

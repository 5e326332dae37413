"""Output hardening: reveal only the top classes, rounded probabilities, or the label alone.

Every prediction carries ``label``; ``classes`` and ``probabilities`` (same
order) follow unless the policy is label-only. With all scores the classes
are in index order; with top-k they are the k most likely, most likely first.

Reference: F. Tramèr, F. Zhang, A. Juels, M. Reiter, T. Ristenpart, "Stealing
machine learning models via prediction APIs", USENIX Security 2016, which
shows that rounding and label-only outputs slow down extraction without
stopping it; Orekondy et al. (2019) report the same for Knockoff Nets with
top-1 outputs.
"""

from __future__ import annotations

from typing import Any

import torch

from .config import OutputPolicy

__all__ = ["harden_outputs", "UNHARDENED"]

# What the service returns when the hardening guard is off: every probability, unrounded.
UNHARDENED = OutputPolicy(mode="scores", decimals=None)


def harden_outputs(probabilities: torch.Tensor, policy: OutputPolicy) -> list[dict[str, Any]]:
    """Return one JSON-ready prediction per row of ``probabilities`` (N, C), as ``policy`` allows."""
    labels = probabilities.argmax(dim=1).tolist()
    if policy.mode == "label":
        return [{"label": int(label)} for label in labels]
    if policy.mode == "top-k":
        k = min(policy.top_k, probabilities.shape[1])
        values, classes = probabilities.topk(k, dim=1)
    else:
        values = probabilities
        classes = torch.arange(probabilities.shape[1]).expand_as(probabilities)
    if policy.decimals is not None:
        values = torch.round(values.to(torch.float64), decimals=policy.decimals)
    return [
        {"label": int(label), "classes": row_classes, "probabilities": row_values}
        for label, row_classes, row_values in zip(labels, classes.tolist(), values.tolist())
    ]

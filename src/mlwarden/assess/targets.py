"""Target classes for targeted runs, chosen per sample independently of batching."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import PlanError

__all__ = ["make_targets", "TARGET_MODES"]

TARGET_MODES = ("random", "next", "least-likely")


def make_targets(
    mode: Any, labels: torch.Tensor, num_classes: int, seed: int, clean_logits: torch.Tensor | None = None
) -> torch.Tensor:
    """Return int64 target classes, never equal to the label.

    Parameters
    ----------
    mode : str or int
        ``random`` (uniform over the other classes, from ``seed``), ``next``
        (label + 1 modulo the number of classes), ``least-likely`` (the class
        with the lowest clean logit), or a class index for every sample.
    labels : torch.Tensor
        True labels of the whole data set, in order, so that a sample's target
        does not depend on the batch it falls in.
    """
    count = labels.shape[0]
    if isinstance(mode, bool):
        raise PlanError(f"target must be one of {', '.join(TARGET_MODES)} or a class index, got {mode!r}", value=mode)
    if isinstance(mode, int):
        if not 0 <= mode < num_classes:
            raise PlanError(f"target class {mode} is out of range; the data set has classes 0 to {num_classes - 1}", value=mode)
        return torch.full((count,), mode, dtype=torch.int64)
    if mode == "random":
        generator = torch.Generator().manual_seed(seed)
        shift = torch.randint(1, num_classes, (count,), generator=generator)
        return (labels + shift) % num_classes
    if mode == "next":
        return (labels + 1) % num_classes
    if mode == "least-likely":
        if clean_logits is None:
            raise PlanError("target=least-likely needs the clean logits", value=mode)
        return clean_logits.argmin(1)
    raise PlanError(f"target must be one of {', '.join(TARGET_MODES)} or a class index, got {mode!r}", value=mode)

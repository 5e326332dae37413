"""Helpers of the attacks fitted on training images before they run (universal perturbation, patch)."""

from __future__ import annotations

from typing import Any

import torch

from ...data import Dataset

__all__ = ["training_subset", "progress_disabled"]


def training_subset(context: Any, count: int, salt: int) -> Dataset:
    """Return ``count`` images of the assessment's training split, picked by a generator seeded from ``salt``."""
    train = context.train()
    order = torch.randperm(len(train), generator=context.generator(salt))[:count]
    return Dataset(train.images[order], train.labels[order], train.class_names, train.name, "train", train.bounds)


def progress_disabled(progress: bool | None) -> bool | None:
    """Return tqdm's ``disable`` for a progress setting: None shows the bar only on a terminal."""
    return None if progress is None else not progress

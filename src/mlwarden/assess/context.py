"""What an attack may learn about the assessment before it runs, for attacks that need preparation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..data import Dataset

__all__ = ["AssessmentContext"]


@dataclass
class AssessmentContext:
    """Data and settings shared by the attacks of one assessment.

    Attacks that must be fitted before they run (a universal perturbation,
    a patch, a surrogate model) define ``prepare(model, context)``; the
    runner calls it once, before the first batch.

    Attributes
    ----------
    test : Dataset
        The samples under assessment.
    load_train : callable
        Returns the training split of the same data set, loaded on first use.
    seed : int
    batch_size : int
    bounds : (float, float)
    progress : bool or None
        Whether long preparation may show a progress bar.
    """

    test: Dataset
    load_train: Callable[[], Dataset]
    seed: int = 0
    batch_size: int = 500
    bounds: tuple[float, float] = (0.0, 1.0)
    progress: bool | None = None
    _train: Dataset | None = field(default=None, repr=False)

    def train(self) -> Dataset:
        """Return the training split, loading it once."""
        if self._train is None:
            self._train = self.load_train()
        return self._train

    def generator(self, salt: int = 0) -> torch.Generator:
        """Return a generator seeded from the plan's seed and a salt that names the use."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + salt)

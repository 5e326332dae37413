"""Shared parts of the query-based attacks: per-sample query budgets, per-sample randomness, margins.

:class:`QueryTracker` routes every query of one attack call through a
:class:`~mlwarden.models.query.QueryModel`, attributes it to a sample, and
raises before a sample would exceed its own budget, so ``max_queries`` is a
hard limit per sample, as the model's ``budget`` is a hard limit overall.

:class:`SampleRandom` gives each sample its own generator seeded from the
attack's seed and the sample's global index, so a sample's result does not
depend on the batch it travels in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from ...errors import BudgetExhausted
from ...models.query import QueryModel
from ..gradients import CostCounter

__all__ = ["QueryTracker", "SampleRandom", "margin_loss", "is_adversarial", "objective_class"]

logger = logging.getLogger(__name__)

# Rows sent to the model in one call at most, so that attacks probing many points per sample
# (HopSkipJump's gradient estimate, the one-pixel population) keep memory bounded.
_MAX_ROWS_PER_CALL = 20_000


class QueryTracker:
    """Per-sample query accounting of one attack call.

    Parameters
    ----------
    model : QueryModel
        The model queried.
    count : int
        Number of samples of the call.
    max_queries : int
        Queries allowed per sample.
    counter : CostCounter
        The attack call's cost counter, which also receives every query.
    attack : str
        Name of the attack, for the log message when the model's budget runs out.
    """

    def __init__(self, model: QueryModel, count: int, max_queries: int, counter: CostCounter, attack: str) -> None:
        self.model = model
        self.max_queries = max_queries
        self.spent = torch.zeros(count, dtype=torch.int64)
        self.counter = counter
        self.attack = attack

    def left(self, rows: torch.Tensor) -> torch.Tensor:
        """Return the queries each sample in ``rows`` may still make."""
        return self.max_queries - self.spent[rows]

    def scores(self, inputs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Return probabilities (M, C) for inputs (M, ...), where row m belongs to sample ``rows[m]``."""
        return self._query(self.model.predict_scores, inputs, rows)

    def labels(self, inputs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Return top labels (M,) for inputs (M, ...), where row m belongs to sample ``rows[m]``."""
        return self._query(self.model.predict_labels, inputs, rows)

    def _query(
        self, predict: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, rows: torch.Tensor
    ) -> torch.Tensor:
        per_sample = torch.bincount(rows, minlength=len(self.spent))
        if bool((self.spent + per_sample > self.max_queries).any()):
            # An attack must check left() before querying; reaching this is a bug in the attack.
            raise RuntimeError(f"{self.attack}: a query would exceed max_queries={self.max_queries} for a sample")
        remaining = self.model.remaining
        if remaining is not None and remaining < len(inputs):
            # Send the whole query at once, so that the model rejects it before running any chunk of it.
            return predict(inputs)
        outputs = [predict(inputs[start : start + _MAX_ROWS_PER_CALL]) for start in range(0, len(inputs), _MAX_ROWS_PER_CALL)]
        self.spent += per_sample
        self.counter.queries += int(rows.numel())
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]

    def report_exhausted(self, error: BudgetExhausted) -> None:
        """Log that the model's overall budget stopped the attack early."""
        logger.warning("%s stopped early and returns the best inputs found so far: %s", self.attack, error.message)


class SampleRandom:
    """One random generator per sample, seeded from ``(seed, global index, salt)``.

    Draws are made for every sample of the call in the same order, so each
    sample's stream depends only on its own index.
    """

    def __init__(self, seed: int, indices: torch.Tensor, salt: int = 0) -> None:
        self.generators = [
            torch.Generator().manual_seed(_mix(seed, int(index), salt)) for index in indices.tolist()
        ]

    def uniform(self, *shape: int) -> torch.Tensor:
        """Return uniform values in [0, 1), shape (N, *shape), from every sample's generator."""
        return torch.stack([torch.rand(shape, generator=generator) for generator in self.generators])

    def normal_each(self, rows: torch.Tensor, counts: torch.Tensor, *shape: int) -> torch.Tensor:
        """Return ``counts[i]`` standard normal draws of ``shape`` for each sample ``rows[i]``, concatenated."""
        draws = [
            torch.randn((count, *shape), generator=self.generators[row])
            for row, count in zip(rows.tolist(), counts.tolist())
        ]
        return torch.cat(draws) if draws else torch.empty(0, *shape)

    def uniform_each(self, rows: torch.Tensor, counts: torch.Tensor, *shape: int) -> torch.Tensor:
        """Return ``counts[i]`` uniform draws in [0, 1) of ``shape`` for each sample ``rows[i]``, concatenated."""
        draws = [
            torch.rand((count, *shape), generator=self.generators[row]) for row, count in zip(rows.tolist(), counts.tolist())
        ]
        return torch.cat(draws) if draws else torch.empty(0, *shape)

    def permutation(self, size: int) -> torch.Tensor:
        """Return one random permutation of ``range(size)`` per sample, shape (N, size)."""
        return torch.stack([torch.randperm(size, generator=generator) for generator in self.generators])


def _mix(seed: int, index: int, salt: int) -> int:
    """Return a 63-bit seed that differs for every (seed, index, salt)."""
    value = (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + salt * 0x94D049BB133111EB) & (2**64 - 1)
    value ^= value >> 31
    return value & (2**63 - 1)


def objective_class(labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """Return the class whose score the attack works on: the target, else the label."""
    return labels if targets is None else targets


def margin_loss(scores: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """Return the margin an attack drives below zero, from probabilities (N, C).

    Untargeted: log p(label) minus the largest other log-probability.
    Targeted: the largest non-target log-probability minus log p(target).
    Differences of log-probabilities equal differences of logits, so this is
    the logit margin, whatever the model returns.
    """
    log_scores = scores.clamp_min(1e-30).log()
    rows = torch.arange(len(scores))
    chosen = objective_class(labels, targets)
    own = log_scores[rows, chosen]
    others = log_scores.clone()
    others[rows, chosen] = float("-inf")
    best_other = others.max(dim=1).values
    return own - best_other if targets is None else best_other - own


def is_adversarial(predicted: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """Return whether each prediction fools the model: not the label, or the target."""
    return predicted != labels if targets is None else predicted == targets

"""Jacobian-based dataset augmentation: grow a substitute's training set along its own gradients.

Reference: N. Papernot, P. McDaniel, I. Goodfellow, S. Jha, Z. B. Celik,
A. Swami, "Practical black-box attacks against machine learning", AsiaCCS 2017.

The attacker starts from a small seed set of natural images. Each round it
labels the new points with the victim, trains a substitute on every point
so far, then adds, for every point x, the point
``clip(x + lambda * sign(d F_sub[label(x)] / dx))``: a step along the sign of
the gradient of the substitute's logit for the victim's label, which moves
towards the substitute's decision boundaries, where new labels teach it the
most. The step's sign flips every ``tau`` rounds (Papernot et al.'s periodic
step size), so the set does not drift off the data manifold. The set doubles
each round until the budget is spent. With ``max_new`` set, only that many
randomly drawn points are augmented per round (their reservoir sampling).

The victim's probabilities are used when it shows them, else its labels.

Limitations: the synthetic points lie at a fixed L-inf distance from their
parents, which is what the PRADA-style monitor of :mod:`mlwarden.serve`
detects; the substitute mainly learns the victim near the seed images.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch

from ..._validation import check_int, check_real
from ...threat import Frequency, Goal, Knowledge, Specificity, Stage, ThreatProfile
from .base import ExtractionEvaluation, ExtractionResult, ModelExtraction, check_pool


if TYPE_CHECKING:
    from ...models.query import QueryModel

__all__ = ["JacobianAugmentation"]

logger = logging.getLogger(__name__)


class JacobianAugmentation(ModelExtraction):
    """Papernot et al.'s Jacobian-based dataset augmentation, bounded by a query budget.

    Parameters
    ----------
    seed_size : int, default 100
        Natural images drawn from the pool as the seed set.
    rounds : int, default 6
        Substitute training rounds; the last one adds no points.
    step_size : float, default 0.1
        lambda, the L-inf step of each augmentation, in input units.
    tau : int, default 3
        Rounds between flips of the step's sign.
    max_new : int, optional
        Points augmented per round, drawn at random; all points by default.
    architecture, epochs, batch_size, learning_rate, query_batch, seed
        See :class:`~mlwarden.attacks.extraction.base.ModelExtraction`.
    """

    name = "jacobian"
    profile = ThreatProfile(
        Goal.CONFIDENTIALITY, Stage.API, Knowledge.DECISION_BASED, Frequency.ITERATIVE, (Specificity.UNTARGETED,)
    )

    def __init__(
        self,
        *,
        seed_size: int = 100,
        rounds: int = 6,
        step_size: float = 0.1,
        tau: int = 3,
        max_new: int | None = None,
        architecture: str = "lenet5",
        epochs: int = 10,
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        query_batch: int = 100,
        seed: int = 0,
    ) -> None:
        super().__init__(
            architecture=architecture,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            query_batch=query_batch,
            seed=seed,
        )
        owner = "JacobianAugmentation"
        self.seed_size = check_int(seed_size, "seed_size", owner, low=1)
        self.rounds = check_int(rounds, "rounds", owner, low=1)
        self.step_size = check_real(step_size, "step_size", owner, low=0.0, low_inclusive=False)
        self.tau = check_int(tau, "tau", owner, low=1)
        self.max_new = None if max_new is None else check_int(max_new, "max_new", owner, low=1)

    def extract(
        self,
        victim: QueryModel,
        pool: torch.Tensor,
        *,
        budget: int,
        evaluation: ExtractionEvaluation | None = None,
    ) -> ExtractionResult:
        """Run the rounds until they end or ``budget`` queries are spent; score the substitute after each round.

        Parameters
        ----------
        victim : QueryModel
        pool : torch.Tensor
            The attacker's natural images (N, C, H, W); ``seed_size`` are drawn from it.
        budget : int
        evaluation : ExtractionEvaluation, optional
        """
        owner = "JacobianAugmentation"
        budget = check_int(budget, "budget", owner, low=1)
        check_pool(pool, owner, self.seed_size)
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(self.seed)
        low, high = victim.bounds
        points = pool[torch.randperm(len(pool), generator=generator)[: min(self.seed_size, budget)]]
        inputs = points[:0]
        answers: torch.Tensor | None = None
        checkpoints = []
        stopped = None
        copy = None
        num_classes = victim.num_classes or 10
        for round_index in range(self.rounds):
            new = points[: budget - len(inputs)]
            reply, stopped = self._ask(victim, new)
            if reply is not None and len(reply):
                inputs = torch.cat([inputs, new[: len(reply)]])
                answers = reply if answers is None else torch.cat([answers, reply])
            num_classes = victim.num_classes or num_classes
            if answers is None:
                break
            copy = self._fit(inputs, answers, num_classes, salt=round_index)
            checkpoints.append(self._checkpoint(copy, len(inputs), evaluation, started))
            if stopped is not None or len(inputs) >= budget or round_index == self.rounds - 1:
                break
            # Periodic step size: lambda for tau rounds, then -lambda for tau rounds, and so on.
            sign = 1.0 if (round_index // self.tau) % 2 == 0 else -1.0
            points = self._augment(copy, inputs, answers, sign * self.step_size, (low, high), generator)
        if copy is None:
            copy = self._new_copy(num_classes).eval()
            checkpoints.append(self._checkpoint(copy, 0, evaluation, started))
        return ExtractionResult(self.name, copy, checkpoints, len(inputs), stopped, self.settings())

    def _augment(
        self,
        substitute: torch.nn.Module,
        inputs: torch.Tensor,
        answers: torch.Tensor,
        step: float,
        bounds: tuple[float, float],
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Return the new points: a signed step along the substitute's gradient of the victim's class."""
        if self.max_new is not None and len(inputs) > self.max_new:
            chosen = torch.randperm(len(inputs), generator=generator)[: self.max_new]
            inputs, answers = inputs[chosen], answers[chosen]
        labels = answers.argmax(dim=1) if answers.dim() == 2 else answers
        source = inputs.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logits = substitute(source)
            (gradient,) = torch.autograd.grad(logits.gather(1, labels[:, None]).sum(), source)
        return (inputs + step * gradient.sign()).clamp(bounds[0], bounds[1]).detach()

"""The outcome of an evasion attack: adversarial inputs, success mask, norms and cost."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["AttackCost", "AttackResult", "perturbation_norms"]


@dataclass
class AttackCost:
    """What an attack spent.

    Attributes
    ----------
    gradients : int
        Input gradients computed, summed over samples (one backward pass over
        a batch of 100 counts 100).
    queries : int
        Forward passes without a gradient, summed over samples.
    seconds : float
        Wall-clock time of the call.
    """

    gradients: int = 0
    queries: int = 0
    seconds: float = 0.0

    def __add__(self, other: AttackCost) -> AttackCost:
        return AttackCost(self.gradients + other.gradients, self.queries + other.queries, self.seconds + other.seconds)

    def to_dict(self) -> dict[str, Any]:
        return {"gradients": self.gradients, "queries": self.queries, "seconds": self.seconds}


def perturbation_norms(adversarial: torch.Tensor, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Return per-sample L0, L2 and L-inf norms of ``adversarial - inputs``.

    L0 counts the input elements (pixels times channels) that changed by more
    than 1e-6.
    """
    delta = (adversarial - inputs).flatten(1)
    magnitude = delta.abs()
    return {
        "l0": (magnitude > 1e-6).sum(1).to(torch.float32),
        "l2": delta.norm(p=2, dim=1),
        "linf": magnitude.amax(dim=1) if delta.shape[1] else torch.zeros(delta.shape[0]),
    }


@dataclass
class AttackResult:
    """Outcome of one attack call on a batch.

    Attributes
    ----------
    attack : str
        Name of the attack.
    inputs, adversarial : torch.Tensor
        Original and adversarial inputs, same shape; ``adversarial`` always
        lies within the model's bounds (and within ``eps`` for budgeted attacks).
    labels : torch.Tensor
        True labels, int64 (N,).
    targets : torch.Tensor or None
        Target labels of a targeted run, else None.
    predictions : torch.Tensor
        Model's prediction on ``adversarial``, recomputed after the attack.
    clean_predictions : torch.Tensor
        Model's prediction on ``inputs``.
    success : torch.Tensor
        bool (N,): the fresh prediction is adversarial (untargeted: not the
        label; targeted: the target).
    already_adversarial : torch.Tensor
        bool (N,): the clean input was already adversarial, so it was returned
        unchanged.
    l0, l2, linf : torch.Tensor
        Per-sample perturbation norms.
    eps : float or None
        Budget of the run, None for minimal-perturbation attacks.
    cost : AttackCost
    queries_per_sample : torch.Tensor or None
        Queries spent on each sample, for query-based attacks.
    """

    attack: str
    inputs: torch.Tensor
    adversarial: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor | None
    predictions: torch.Tensor
    clean_predictions: torch.Tensor
    success: torch.Tensor
    already_adversarial: torch.Tensor
    l0: torch.Tensor
    l2: torch.Tensor
    linf: torch.Tensor
    eps: float | None
    cost: AttackCost = field(default_factory=AttackCost)
    queries_per_sample: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def targeted(self) -> bool:
        """Whether the run was targeted."""
        return self.targets is not None

    @property
    def clean_correct(self) -> torch.Tensor:
        """bool (N,): the model classified the clean input correctly."""
        return self.clean_predictions == self.labels

    @property
    def robust_correct(self) -> torch.Tensor:
        """bool (N,): the model still classifies the adversarial input correctly."""
        return self.predictions == self.labels

    @property
    def accuracy(self) -> float:
        """Accuracy under attack over all samples."""
        return float(self.robust_correct.float().mean()) if len(self) else 0.0

    @property
    def attacked(self) -> torch.Tensor:
        """bool (N,): samples the attack had to work on (not already adversarial)."""
        return ~self.already_adversarial

    @property
    def success_rate(self) -> float:
        """Fraction of the attacked samples that became adversarial."""
        attacked = self.attacked
        if not bool(attacked.any()):
            return 0.0
        return float(self.success[attacked].float().mean())

    @staticmethod
    def concatenate(results: list[AttackResult]) -> AttackResult:
        """Join the results of consecutive batches of one attack into one result."""
        if not results:
            raise ValueError("concatenate needs at least one AttackResult")
        first = results[0]

        def cat(name: str) -> torch.Tensor | None:
            values = [getattr(r, name) for r in results]
            return None if any(v is None for v in values) else torch.cat(values)

        cost = AttackCost()
        for result in results:
            cost = cost + result.cost
        return AttackResult(
            attack=first.attack,
            inputs=cat("inputs"),
            adversarial=cat("adversarial"),
            labels=cat("labels"),
            targets=cat("targets"),
            predictions=cat("predictions"),
            clean_predictions=cat("clean_predictions"),
            success=cat("success"),
            already_adversarial=cat("already_adversarial"),
            l0=cat("l0"),
            l2=cat("l2"),
            linf=cat("linf"),
            eps=first.eps,
            cost=cost,
            queries_per_sample=cat("queries_per_sample"),
        )

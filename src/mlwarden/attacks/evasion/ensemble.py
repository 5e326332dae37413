"""The ``strongest`` preset: a per-sample ensemble of budgeted white-box attacks.

Reference for the choice of members: F. Croce, M. Hein, "Reliable evaluation
of adversarial robustness with an ensemble of diverse parameter-free
attacks", ICML 2020, which showed that APGD with the cross-entropy and the
DLR losses together find adversarial examples that single attacks miss.

Every member attacks every sample at the same budget. For each sample, the
ensemble keeps the smallest perturbation in the ensemble's norm among the
members that made it adversarial, with ties broken by the L2 norm. So the
reported accuracy under attack is the minimum over the members, sample by
sample, and the reported norms are the smallest any member found. A sample
that no member fools gets the output of the first member.

Limitations: the cost is the sum of the members' costs; members run on all
samples instead of only on those still robust (as AutoAttack does), because
a later member may find a smaller perturbation. The defaults suit models
without gradient masking; for defended models add attacks that do not rely
on gradients.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from ..._validation import check_int
from ...errors import ParameterError
from ...threat import Frequency, Goal, Knowledge, Level, Scope, Specificity, Stage, ThreatProfile
from ..base import EvasionAttack
from ..gradients import CostCounter
from ..result import AttackResult
from .apgd import AutoProjectedGradientDescent, L2AutoProjectedGradientDescent
from .pgd import L2ProjectedGradientDescent, ProjectedGradientDescent

__all__ = ["StrongestAttack", "L2StrongestAttack"]

logger = logging.getLogger(__name__)


class StrongestAttack(EvasionAttack):
    """Per-sample ensemble under an L-inf budget that keeps each sample's smallest successful perturbation.

    Parameters
    ----------
    attacks : sequence of EvasionAttack or str, optional
        Members, all with the ensemble's norm and all taking ``eps``. A string
        is an attack name of ``--attack``, built with its default settings.
        Default: PGD (40 steps, early stop), APGD-CE and APGD-DLR (100 steps
        each).
    seed : int, default 0
        Seed of the default members' random starts.

    Raises
    ------
    ParameterError
        A member has another norm or no budget, or the list is empty.

    Examples
    --------
    >>> import torch
    >>> from mlwarden.models import load_pretrained
    >>> model, _ = load_pretrained("lenet5")
    >>> attack = StrongestAttack(attacks=["pgd", "apgd-dlr"])
    >>> result = attack(model, torch.rand(4, 1, 28, 28), torch.zeros(4, dtype=torch.int64), eps=0.05)
    >>> bool(result.linf.max() <= 0.05 + 1e-6)
    True
    """

    name = "strongest"
    # Attack names fit to be members, for error messages.
    member_examples: ClassVar[str] = "pgd, apgd-ce, apgd-dlr"
    norm = "linf"
    needs_eps = True
    profile = ThreatProfile(
        goal=Goal.INTEGRITY,
        stage=Stage.INFERENCE,
        knowledge=Knowledge.WHITE_BOX,
        frequency=Frequency.ITERATIVE,
        specificity=(Specificity.UNTARGETED, Specificity.TARGETED),
        scope=Scope.INDIVIDUAL,
        level=Level.IMAGE,
    )

    def __init__(self, *, attacks: Sequence[EvasionAttack | str] | None = None, seed: int = 0) -> None:
        owner = self.name
        self.seed = check_int(seed, "seed", owner, low=0)
        if isinstance(attacks, (str, EvasionAttack)):
            attacks = [attacks]  # one member: a bare name must not be read letter by letter
        members = self._default_members(self.seed) if attacks is None else [_build(a, owner) for a in attacks]
        if not members:
            raise ParameterError(f"{owner}: attacks must name at least one attack, got an empty list", value=attacks)
        for member in members:
            if member.norm != self.norm or not member.needs_eps:
                raise ParameterError(
                    f"{owner}: every member must be a budgeted {self.norm} attack, but {member.name!r} has norm "
                    f"{member.norm!r}; pick members such as {self.member_examples}",
                    value=member.name,
                )
        self.attacks = members

    @staticmethod
    def _default_members(seed: int) -> list[EvasionAttack]:
        return [
            ProjectedGradientDescent(steps=40, seed=seed),
            AutoProjectedGradientDescent(loss="ce", steps=100, seed=seed),
            AutoProjectedGradientDescent(loss="dlr", steps=100, seed=seed),
        ]

    def settings(self) -> dict[str, object]:
        """Return the settings, with each member as its name and settings."""
        return {"attacks": [{"name": m.name, **m.settings()} for m in self.attacks], "seed": self.seed}

    def _check_mode(self, targets: torch.Tensor | None) -> None:
        # A member that cannot run targeted would otherwise fail halfway through the ensemble.
        mode = Specificity.TARGETED if targets is not None else Specificity.UNTARGETED
        for member in self.attacks:
            if mode not in member.profile.specificity:
                raise ParameterError(
                    f"{self.name}: member {member.name!r} cannot run {mode.value}; remove it from attacks or "
                    f"{'drop the targets' if targets is not None else 'pass targets'}",
                    value=member.name,
                )

    def _run(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        targets: torch.Tensor | None,
        eps: float | None,
        bounds: tuple[float, float],
        indices: torch.Tensor,
        counter: CostCounter,
    ) -> torch.Tensor:
        results: list[AttackResult] = []
        for member in self.attacks:
            result = member(model, inputs, labels, targets, eps=eps, bounds=bounds, indices=indices)
            assert isinstance(result, AttackResult)  # a scalar eps gives one result
            counter.gradients += result.cost.gradients
            counter.queries += result.cost.queries
            logger.debug("%s: member %s fooled %d/%d", self.name, member.name, int(result.success.sum()), len(result))
            results.append(result)
        return _smallest_successful(results, self.norm or "linf")


class L2StrongestAttack(StrongestAttack):
    """The ``strongest`` ensemble under an L2 budget: PGD-L2, APGD-CE-L2 and APGD-DLR-L2 by default."""

    name = "strongest-l2"
    norm = "l2"
    member_examples: ClassVar[str] = "pgd-l2, or APGD objects built with norm='l2'"

    @staticmethod
    def _default_members(seed: int) -> list[EvasionAttack]:
        return [
            L2ProjectedGradientDescent(steps=40, seed=seed),
            L2AutoProjectedGradientDescent(loss="ce", steps=100, seed=seed),
            L2AutoProjectedGradientDescent(loss="dlr", steps=100, seed=seed),
        ]


def _smallest_successful(results: list[AttackResult], norm: str) -> torch.Tensor:
    """Return, per sample, the successful adversarial input of smallest norm (first member's if none)."""
    success = torch.stack([r.success for r in results])
    primary = torch.where(success, torch.stack([getattr(r, norm) for r in results]), float("inf"))
    # Among the members within float32 resolution of the smallest norm, take the smallest L2.
    near = primary <= primary.min(dim=0).values + 1e-6
    secondary = torch.where(near & success, torch.stack([r.l2 for r in results]), float("inf"))
    chosen = torch.where(success.any(dim=0), secondary.argmin(dim=0), 0)
    stacked = torch.stack([r.adversarial for r in results])
    return stacked[chosen, torch.arange(stacked.shape[1])]


def _build(attack: EvasionAttack | str, owner: str) -> EvasionAttack:
    if isinstance(attack, EvasionAttack):
        return attack
    if isinstance(attack, str):
        # Imported here because the registry imports this package.
        from ..registry import get_attack_entry

        built, _ = get_attack_entry(attack).build({})
        if not isinstance(built, EvasionAttack):
            raise ParameterError(f"{owner}: {attack!r} is not an evasion attack", value=attack)
        return built
    raise ParameterError(
        f"{owner}: attacks must hold EvasionAttack objects or attack names, got {type(attack).__name__}", value=attack
    )

"""Attack names of the full-strength white-box suite, registered for ``--attack`` on import.

Budgets are those used on 28x28 gray images in [0, 1]: L-inf 0.1, and L2
1.5, which is about the mean L2 norm of a successful L-inf PGD perturbation
of 0.1 on the shipped LeNet.
"""

from __future__ import annotations

from ...errors import ParameterError
from ..registry import AttackEntry, NormBudgetEntry, register_attack
from .apgd import AutoProjectedGradientDescent, L2AutoProjectedGradientDescent
from .carlini_wagner import CarliniWagnerL2
from .ensemble import L2StrongestAttack, StrongestAttack
from .pgd import L2ProjectedGradientDescent, ProjectedGradientDescent

__all__ = ["apgd_ce", "apgd_dlr"]

LINF_EPS = 0.1
L2_EPS = 1.5


def _auto_pgd(
    loss: str, norm: str, steps: int, restarts: int, rho: float, alpha: float, random_start: bool, seed: int
) -> AutoProjectedGradientDescent:
    classes = {"linf": AutoProjectedGradientDescent, "l2": L2AutoProjectedGradientDescent}
    if norm not in classes:
        raise ParameterError(f"apgd-{loss}: norm must be one of 'linf', 'l2', got {norm!r}", value=norm)
    return classes[norm](
        loss=loss, steps=steps, restarts=restarts, rho=rho, alpha=alpha, random_start=random_start, seed=seed
    )


def apgd_ce(
    *,
    norm: str = "linf",
    steps: int = 100,
    restarts: int = 1,
    rho: float = 0.75,
    alpha: float = 0.75,
    random_start: bool = True,
    seed: int = 0,
) -> AutoProjectedGradientDescent:
    """Return APGD with the cross-entropy loss under the ``linf`` or ``l2`` norm."""
    return _auto_pgd("ce", norm, steps, restarts, rho, alpha, random_start, seed)


def apgd_dlr(
    *,
    norm: str = "linf",
    steps: int = 100,
    restarts: int = 1,
    rho: float = 0.75,
    alpha: float = 0.75,
    random_start: bool = True,
    seed: int = 0,
) -> AutoProjectedGradientDescent:
    """Return APGD with the difference-of-logits-ratio loss under the ``linf`` or ``l2`` norm."""
    return _auto_pgd("dlr", norm, steps, restarts, rho, alpha, random_start, seed)


register_attack(
    AttackEntry(
        "pgd",
        ProjectedGradientDescent,
        {"steps": 40, "random_start": True, "restarts": 1},
        LINF_EPS,
        "projected gradient descent with random start (L-inf)",
    )
)
register_attack(
    AttackEntry(
        "pgd-l2",
        L2ProjectedGradientDescent,
        {"steps": 40, "random_start": True, "restarts": 1},
        L2_EPS,
        "projected gradient descent with random start (L2)",
    )
)
# The default budget follows the norm: norm=l2 gets L2_EPS, never the L-inf 0.1 as an L2 budget.
_APGD_BUDGETS = {"linf": LINF_EPS, "l2": L2_EPS}
register_attack(
    NormBudgetEntry(
        "apgd-ce", apgd_ce, {}, LINF_EPS, "auto-PGD, cross-entropy loss (L-inf 0.1; norm=l2 for L2 1.5)", _APGD_BUDGETS
    )
)
register_attack(
    NormBudgetEntry(
        "apgd-dlr",
        apgd_dlr,
        {},
        LINF_EPS,
        "auto-PGD, difference-of-logits-ratio loss (L-inf 0.1; norm=l2 for L2 1.5)",
        _APGD_BUDGETS,
    )
)
register_attack(
    AttackEntry(
        "cw",
        CarliniWagnerL2,
        {"steps": 100, "binary_search_steps": 5},
        None,
        "Carlini-Wagner minimal perturbation with binary search (L2)",
    )
)
register_attack(
    AttackEntry("strongest", StrongestAttack, {}, LINF_EPS, "per-sample ensemble of PGD, APGD-CE, APGD-DLR (L-inf)")
)
register_attack(
    AttackEntry("strongest-l2", L2StrongestAttack, {}, L2_EPS, "per-sample ensemble of PGD, APGD-CE, APGD-DLR (L2)")
)

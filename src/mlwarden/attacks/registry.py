"""Attack names for ``--attack`` and assessment plans, with their default settings.

Each entry maps a lower-case name to the attack class, the constructor
settings and the call-time budget that ``mlwarden assess`` uses when the
user gives none. Settings given by the user override the defaults; unknown
settings are rejected with the list of known ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._validation import check_eps
from ..errors import PlanError
from .evasion import BasicIterativeMethod, DeepFool, FastGradientSignMethod, SaliencyMapMethod

__all__ = ["AttackEntry", "NormBudgetEntry", "ATTACKS", "DEFAULT_ATTACKS", "register_attack", "get_attack_entry", "CALL_SETTINGS"]

# Settings that the runner consumes at call time instead of passing to the constructor.
CALL_SETTINGS = ("eps", "target")


@dataclass(frozen=True)
class AttackEntry:
    """How ``assess`` builds one named attack.

    Attributes
    ----------
    name : str
        Name used by ``--attack`` and in reports.
    factory : callable
        The attack class (or a function returning an attack) taking the
        constructor settings as keyword arguments.
    defaults : dict
        Constructor settings used when the user gives none.
    eps : float, list of float or None
        Default budget; None for attacks without one.
    summary : str
        One line for ``--help`` and the report.
    """

    name: str
    factory: Callable[..., Any]
    defaults: dict[str, Any] = field(default_factory=dict)
    eps: float | list[float] | None = None
    summary: str = ""

    def setting_names(self) -> list[str]:
        """Return the constructor settings the factory accepts, plus the call-time ones."""
        try:
            parameters = inspect.signature(self.factory).parameters
        except (TypeError, ValueError):
            return list(self.defaults) + list(CALL_SETTINGS)
        names = [n for n, p in parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
        return names + [s for s in CALL_SETTINGS if s not in names]

    def build(self, settings: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """Return the attack built from defaults updated by ``settings``, and the call-time settings.

        Raises
        ------
        PlanError
            A setting is unknown to this attack.
        """
        known = self.setting_names()
        unknown = [key for key in settings if key not in known]
        if unknown:
            raise PlanError(
                f"attack {self.name!r} has no setting {unknown[0]!r}; its settings are {', '.join(known)}",
                value=unknown[0],
            )
        merged = {**self.defaults, **settings}
        call = {key: merged.pop(key) for key in CALL_SETTINGS if key in merged}
        if "eps" not in call and self.eps is not None:
            call["eps"] = self.eps
        if call.get("eps") is not None:
            budgets = check_eps(call["eps"], f"attack {self.name!r}")
            call["eps"] = budgets if isinstance(call["eps"], (list, tuple)) else budgets[0]
        return self.factory(**merged), call



@dataclass(frozen=True)
class NormBudgetEntry(AttackEntry):
    """An attack entry whose default budget depends on the norm of the built attack.

    ``eps`` is the budget of the default norm. ``budgets`` maps each norm to
    its default budget. A norm missing from it gets no default budget, so
    the attack falls back to its own. A budget the user gives is kept.
    """

    budgets: dict[str, float] = field(default_factory=dict)

    def build(self, settings: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """Return the attack and the call-time settings, with the default budget of the attack's norm."""
        attack, call = super().build(settings)
        if "eps" not in settings:
            budget = self.budgets.get(getattr(attack, "norm", None) or "")
            if budget is None:
                call.pop("eps", None)
            else:
                call["eps"] = budget
        return attack, call

ATTACKS: dict[str, AttackEntry] = {}


def register_attack(entry: AttackEntry) -> AttackEntry:
    """Add an entry to :data:`ATTACKS` and return it."""
    if entry.name in ATTACKS:
        raise ValueError(f"attack name {entry.name!r} is already registered")
    ATTACKS[entry.name] = entry
    return entry


def get_attack_entry(name: str) -> AttackEntry:
    """Return the entry for ``name``; raise :class:`PlanError` listing the known names otherwise."""
    _load_optional_families()
    key = name.strip().lower()
    if key not in ATTACKS:
        raise PlanError(f"unknown attack {name!r}; known attacks: {', '.join(sorted(ATTACKS))}", value=name)
    return ATTACKS[key]


def _load_optional_families() -> None:
    """Import attack families that register themselves, so their names are known."""
    for module in _FAMILY_MODULES:
        __import__(module)


# Modules that call register_attack when imported, beyond the four classic attacks below.
_FAMILY_MODULES: list[str] = [
    "mlwarden.attacks.evasion._whitebox_entries",
    "mlwarden.attacks.evasion._blackbox_entries",
]

# The four attacks of the classic evaluation, with the budgets used on 28x28 gray images in [0, 1].
register_attack(AttackEntry("fgsm", FastGradientSignMethod, {}, 0.1, "fast gradient sign method (L-inf, one step)"))
register_attack(
    AttackEntry("bim", BasicIterativeMethod, {"steps": 10}, 0.1, "basic iterative method, iterated FGSM (L-inf)")
)
register_attack(
    AttackEntry("deepfool", DeepFool, {"steps": 50, "overshoot": 0.02}, None, "DeepFool minimal perturbation (L2)")
)
register_attack(
    AttackEntry(
        "jsma",
        SaliencyMapMethod,
        {"theta": 1.0, "gamma": 0.1, "saliency": "target"},
        None,
        "saliency map, two pixels per step (L0; saliency=pair for the paper's pair scores)",
    )
)

DEFAULT_ATTACKS = ["fgsm", "bim", "deepfool", "jsma"]

"""Names of poisoning attacks in assessment plans, kept apart from the evasion names.

Evasion attacks run on test inputs at inference; poisoning attacks alter
training data, so the assessment must retrain a model for each of them.
:func:`is_poisoning_attack` tells the runner which path a plan entry takes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...errors import PlanError
from .backdoor import BadNetsBackdoor
from .base import PoisoningAttack
from .feature_collision import FeatureCollision
from .label_flip import RandomLabelFlip, TargetedLabelFlip
from .tabular import MarginLabelFlip, SearchLabelFlip, TabularBackdoor

__all__ = [
    "PoisoningEntry",
    "POISONING_ATTACKS",
    "ASSESSMENT_SETTINGS",
    "register_poisoning_attack",
    "get_poisoning_entry",
    "is_poisoning_attack",
]

# Settings that the poisoning assessment consumes itself instead of passing to the attack.
ASSESSMENT_SETTINGS = ("train_limit", "epochs", "target_index")


@dataclass(frozen=True)
class PoisoningEntry:
    """How an assessment builds one named poisoning attack.

    Attributes
    ----------
    name : str
        Name used in plans and reports.
    factory : callable
        The attack class. When ``needs_model`` is True it takes the
        attacker's model and target input before the keyword settings.
    defaults : dict
        Settings used when the plan gives none; ``rate`` may be a list to sweep.
    kind : {"labels", "backdoor", "clean-label"}
        What the attack changes, which decides the default defenses.
    needs_model : bool
    summary : str
    """

    name: str
    factory: Callable[..., PoisoningAttack]
    defaults: dict[str, Any] = field(default_factory=dict)
    kind: str = "labels"
    needs_model: bool = False
    summary: str = ""

    def setting_names(self) -> list[str]:
        """Return the settings the attack accepts, plus those the assessment consumes."""
        parameters = inspect.signature(self.factory).parameters
        names = [name for name, parameter in parameters.items() if parameter.kind == parameter.KEYWORD_ONLY]
        return names + list(ASSESSMENT_SETTINGS)

    def split_settings(self, settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Return ``(attack settings, assessment settings)`` from defaults updated by ``settings``.

        Raises
        ------
        PlanError
            A setting is unknown to this attack.
        """
        known = self.setting_names()
        unknown = [key for key in settings if key not in known]
        if unknown:
            raise PlanError(
                f"poisoning attack {self.name!r} has no setting {unknown[0]!r}; its settings are {', '.join(known)}",
                value=unknown[0],
            )
        merged = {**self.defaults, **settings}
        assessment = {key: merged.pop(key) for key in ASSESSMENT_SETTINGS if key in merged}
        return merged, assessment


POISONING_ATTACKS: dict[str, PoisoningEntry] = {}


def register_poisoning_attack(entry: PoisoningEntry) -> PoisoningEntry:
    """Add an entry to :data:`POISONING_ATTACKS` and return it."""
    if entry.name in POISONING_ATTACKS:
        raise ValueError(f"poisoning attack name {entry.name!r} is already registered")
    POISONING_ATTACKS[entry.name] = entry
    return entry


def is_poisoning_attack(name: str) -> bool:
    """Return whether ``name`` is a registered poisoning attack."""
    return name.strip().lower() in POISONING_ATTACKS


def get_poisoning_entry(name: str) -> PoisoningEntry:
    """Return the entry for ``name``; raise :class:`PlanError` listing the known names otherwise."""
    key = name.strip().lower()
    if key not in POISONING_ATTACKS:
        raise PlanError(
            f"unknown poisoning attack {name!r}; known poisoning attacks: {', '.join(sorted(POISONING_ATTACKS))}",
            value=name,
        )
    return POISONING_ATTACKS[key]


register_poisoning_attack(
    PoisoningEntry("label-flip", RandomLabelFlip, {"rate": 0.1}, "labels", summary="random labels on a fraction of the samples")
)
register_poisoning_attack(
    PoisoningEntry(
        "targeted-label-flip",
        TargetedLabelFlip,
        {"rate": 0.05, "target_class": 0},
        "labels",
        summary="samples of other classes relabeled as one target class",
    )
)
register_poisoning_attack(
    PoisoningEntry(
        "backdoor",
        BadNetsBackdoor,
        {"rate": 0.05, "target_class": 0},
        "backdoor",
        summary="BadNets: trigger patch on images relabeled to a target class",
    )
)
register_poisoning_attack(
    PoisoningEntry(
        "feature-collision",
        FeatureCollision,
        {"rate": 0.01, "base_class": 0, "target_index": 0},
        "clean-label",
        needs_model=True,
        summary="clean-label poisons whose features collide with one target input",
    )
)
register_poisoning_attack(
    PoisoningEntry("margin-flip", MarginLabelFlip, {"rate": 0.1}, "labels", summary="flips of the labels the victim is surest of")
)
register_poisoning_attack(
    PoisoningEntry("search-flip", SearchLabelFlip, {"rate": 0.1}, "labels", summary="black-box search for the most harmful flips")
)
register_poisoning_attack(
    PoisoningEntry(
        "tabular-backdoor",
        TabularBackdoor,
        {"rate": 0.05, "target_class": 0, "columns": [0]},
        "backdoor",
        summary="trigger values in a few columns of rows relabeled to a target class",
    )
)

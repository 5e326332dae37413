"""Attacks on every stage of the pipeline, grouped as in the threat taxonomy.

- :mod:`mlwarden.attacks.evasion`: inputs crafted to be misclassified at inference;
- :mod:`mlwarden.attacks.poisoning`: training data crafted to skew or backdoor the model;
- :mod:`mlwarden.attacks.extraction`: copying a model through its prediction API.
"""

from .base import EvasionAttack, model_bounds
from .evasion import *  # noqa: F403  (every evasion attack, also importable from here)
from .evasion import __all__ as _EVASION
from .result import AttackCost, AttackResult, perturbation_norms

__all__ = [
    *_EVASION,
    "AttackCost",
    "AttackResult",
    "EvasionAttack",
    "model_bounds",
    "perturbation_norms",
]

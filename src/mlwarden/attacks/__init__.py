"""Attacks on every stage of the pipeline, grouped as in the threat taxonomy.

- :mod:`mlwarden.attacks.evasion`: inputs crafted to be misclassified at inference;
- :mod:`mlwarden.attacks.poisoning`: training data crafted to skew or backdoor the model;
- :mod:`mlwarden.attacks.extraction`: copying a model through its prediction API.
"""

from .base import EvasionAttack, model_bounds
from .evasion import (
    BIM,
    FGSM,
    JSMA,
    BasicIterativeMethod,
    DeepFool,
    FastGradientSignMethod,
    SaliencyMapMethod,
)
from .result import AttackCost, AttackResult, perturbation_norms

__all__ = [
    "BIM",
    "FGSM",
    "JSMA",
    "AttackCost",
    "AttackResult",
    "BasicIterativeMethod",
    "DeepFool",
    "EvasionAttack",
    "FastGradientSignMethod",
    "SaliencyMapMethod",
    "model_bounds",
    "perturbation_norms",
]

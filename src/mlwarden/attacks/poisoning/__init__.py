"""Poisoning attacks: training data altered at collection so that the model learns the wrong thing.

Every attack takes a training set and returns a :class:`PoisonResult`, the
poisoned copy and the indices it altered, so that detectors can be scored
against the truth.

- label flips: :class:`RandomLabelFlip`, :class:`TargetedLabelFlip`, and for
  tabular data against scikit-learn models :class:`MarginLabelFlip` and
  :class:`SearchLabelFlip` (gradient-free availability attacks);
- backdoors: :class:`BadNetsBackdoor` (image trigger patch),
  :class:`TabularBackdoor` (trigger values in columns);
- clean-label: :class:`FeatureCollision`;
- streams against incremental training: :class:`LossMaximizingStream`,
  :class:`DriftStream`.
"""

from .backdoor import TRIGGER_PATTERNS, TRIGGER_POSITIONS, BadNetsBackdoor, backdoor_success_rate
from .base import PoisoningAttack, PoisonResult
from .feature_collision import FeatureCollision
from .label_flip import RandomLabelFlip, TargetedLabelFlip
from .registry import POISONING_ATTACKS, PoisoningEntry, get_poisoning_entry, is_poisoning_attack
from .stream import DriftStream, LossMaximizingStream
from .tabular import MarginLabelFlip, SearchLabelFlip, TabularBackdoor

__all__ = [
    "POISONING_ATTACKS",
    "TRIGGER_PATTERNS",
    "TRIGGER_POSITIONS",
    "BadNetsBackdoor",
    "DriftStream",
    "FeatureCollision",
    "LossMaximizingStream",
    "MarginLabelFlip",
    "PoisonResult",
    "PoisoningAttack",
    "PoisoningEntry",
    "RandomLabelFlip",
    "SearchLabelFlip",
    "TabularBackdoor",
    "TargetedLabelFlip",
    "backdoor_success_rate",
    "get_poisoning_entry",
    "is_poisoning_attack",
]

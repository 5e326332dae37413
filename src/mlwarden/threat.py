"""Threat taxonomy: the tags that every attack and defense carries.

The tags say what the attacker wants (:class:`Goal`), where in the pipeline
the attack strikes (:class:`Stage`), what the attacker knows
(:class:`Knowledge`) and how the attack works (frequency, specificity, scope
and level). Reports use them as columns, so that an assessment can be read as
"which kind of attacker gets how far".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Goal",
    "Stage",
    "Knowledge",
    "Frequency",
    "Specificity",
    "Scope",
    "Level",
    "Posture",
    "ThreatProfile",
    "DefenseProfile",
]


class _Tag(str, enum.Enum):
    """An enum whose values are the lower-case names used in reports and JSON."""

    def __str__(self) -> str:
        return self.value


class Goal(_Tag):
    INTEGRITY = "integrity"
    AVAILABILITY = "availability"
    CONFIDENTIALITY = "confidentiality"


class Stage(_Tag):
    COLLECTION = "collection"
    TRANSMISSION = "transmission"
    PREPROCESSING = "preprocessing"
    STORAGE = "storage"
    TRAINING = "training"
    INFERENCE = "inference"
    API = "api"


class Knowledge(_Tag):
    WHITE_BOX = "white-box"
    GRAY_BOX = "gray-box"
    SCORE_BASED = "black-box score-based"
    DECISION_BASED = "black-box decision-based"


class Frequency(_Tag):
    ONE_SHOT = "one-shot"
    ITERATIVE = "iterative"


class Specificity(_Tag):
    TARGETED = "targeted"
    UNTARGETED = "untargeted"


class Scope(_Tag):
    INDIVIDUAL = "individual"
    UNIVERSAL = "universal"


class Level(_Tag):
    PIXEL = "pixel"
    IMAGE = "image"


class Posture(_Tag):
    REACTIVE = "reactive"
    PROACTIVE = "proactive"


@dataclass(frozen=True)
class ThreatProfile:
    """The taxonomy tags of one attack.

    ``specificity`` lists every mode the attack supports: an attack that runs
    both targeted and untargeted lists both.
    """

    goal: Goal
    stage: Stage
    knowledge: Knowledge
    frequency: Frequency
    specificity: tuple[Specificity, ...]
    scope: Scope = Scope.INDIVIDUAL
    level: Level = Level.IMAGE

    def to_dict(self) -> dict[str, Any]:
        """Return the tags as plain strings, the form stored in ``results.json``."""
        return {
            "goal": self.goal.value,
            "stage": self.stage.value,
            "knowledge": self.knowledge.value,
            "frequency": self.frequency.value,
            "specificity": [s.value for s in self.specificity],
            "scope": self.scope.value,
            "level": self.level.value,
        }


@dataclass(frozen=True)
class DefenseProfile:
    """The taxonomy tags of one defense: its posture and the attacks it answers."""

    posture: Posture
    stage: Stage
    counters: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """Return the tags as plain strings, the form stored in ``results.json``."""
        return {"posture": self.posture.value, "stage": self.stage.value, "counters": list(self.counters)}

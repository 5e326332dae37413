"""Names of the poisoning detectors, for plans, ``scan-data --detectors`` and reports."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...errors import PlanError
from .backdoor import ActivationClusteringDetector, SpectralSignatureDetector
from .base import PoisonDetector
from .label_noise import LabelNoiseDetector
from .outliers import IsolationForestDetector, KNNDistanceDetector

__all__ = ["POISON_DETECTORS", "build_detector", "is_poison_detector"]

POISON_DETECTORS: dict[str, Callable[..., PoisonDetector]] = {
    LabelNoiseDetector.name: LabelNoiseDetector,
    IsolationForestDetector.name: IsolationForestDetector,
    KNNDistanceDetector.name: KNNDistanceDetector,
    SpectralSignatureDetector.name: SpectralSignatureDetector,
    ActivationClusteringDetector.name: ActivationClusteringDetector,
}


def is_poison_detector(name: str) -> bool:
    """Return whether ``name`` is a registered poisoning detector."""
    return name.strip().lower() in POISON_DETECTORS


def build_detector(name: str, **settings: Any) -> PoisonDetector:
    """Return a new detector of that name built with ``settings``.

    Raises
    ------
    PlanError
        The name is unknown or a setting is not accepted.
    """
    key = name.strip().lower()
    if key not in POISON_DETECTORS:
        raise PlanError(f"unknown poisoning detector {name!r}; known detectors: {', '.join(POISON_DETECTORS)}", value=name)
    try:
        return POISON_DETECTORS[key](**settings)
    except TypeError as error:
        raise PlanError(f"poisoning detector {key!r}: {error}", value=key) from None

"""Sanitize a training set with fitted detectors, recording every removed sample in the quarantine.

A sanitizer that drops samples without saying which and why hides both its
false positives and the attack. :func:`sanitize` therefore requires a
:class:`~mlwarden.defenses.poisoning.quarantine.QuarantineStore`, writes a
record with the reason for every sample it removes, and returns kept and
removed indices that together cover the whole set.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import ParameterError
from .base import PoisonDetector, check_labels
from .quarantine import QuarantineStore

__all__ = ["sanitize", "SanitizeResult"]

logger = logging.getLogger(__name__)


@dataclass
class SanitizeResult:
    """The split of a set into kept and removed samples.

    Attributes
    ----------
    kept, removed : numpy.ndarray
        int64 sorted indices; disjoint, and together every index of the set.
    reasons : list of str
        Why each removed sample was removed, in the order of ``removed``.
    scores : numpy.ndarray
        Largest decision value (score minus threshold) of each removed sample.
    record_ids : list of int
        Quarantine record of each removed sample.
    flagged_by : dict
        Detector name -> indices it flagged.
    """

    kept: np.ndarray
    removed: np.ndarray
    reasons: list[str]
    scores: np.ndarray
    record_ids: list[int]
    flagged_by: dict[str, np.ndarray] = field(default_factory=dict)


def sanitize(
    features: Any,
    labels: Any,
    detectors: PoisonDetector | Sequence[PoisonDetector],
    *,
    quarantine: QuarantineStore,
    inputs: Any = None,
    source: str | None = None,
    batch_id: str | None = None,
    fit: bool = True,
) -> SanitizeResult:
    """Flag samples with each detector, quarantine the flagged ones with their reasons, and return the split.

    Parameters
    ----------
    features : array or tensor (N, D) or (N, C, H, W)
        What the detectors look at.
    labels : array or tensor (N,)
    detectors : PoisonDetector or sequence of them
        A sample is removed when any detector flags it.
    quarantine : QuarantineStore
        Where every removed sample is recorded. It is required: removing
        samples without a record is not offered.
    inputs : array or tensor (N, ...), optional
        The raw samples to store in the quarantine; default ``features``.
    source, batch_id : str, optional
        Written with each record.
    fit : bool, default True
        Fit each detector on this set and use ``fit_predict``; False uses
        detectors fitted before (on trusted data, for example).
    """
    if not isinstance(quarantine, QuarantineStore):
        raise ParameterError(
            f"sanitize: quarantine must be a QuarantineStore, got {type(quarantine).__name__}; removed samples are "
            "always recorded",
            value=type(quarantine),
        )
    detector_list = [detectors] if isinstance(detectors, PoisonDetector) else list(detectors)
    if not detector_list:
        raise ParameterError("sanitize: pass at least one detector", value=detectors)
    total = int(features.shape[0])
    label_array = check_labels(labels, "sanitize", total)
    decisions = np.full((len(detector_list), total), -np.inf)
    for row, detector in enumerate(detector_list):
        if fit:
            detector.fit(features, label_array)
            decisions[row] = detector.training_decisions(label_array)
        else:
            decisions[row] = detector.decision_function(features, label_array)
    flags = decisions > 0
    removed = np.flatnonzero(flags.any(0))
    kept = np.flatnonzero(~flags.any(0))
    reasons = [
        "; ".join(detector_list[row].reason for row in np.flatnonzero(flags[:, index])) for index in removed
    ]
    scores = decisions[:, removed].max(0) if len(removed) else np.zeros(0)
    stored = inputs if inputs is not None else features
    record_ids = quarantine.add(
        stored[removed] if len(removed) else stored[:0],
        label_array[removed],
        reason=reasons,
        source=source,
        batch_id=batch_id,
        indices=removed,
        scores=scores,
        details=[{"detectors": [detector_list[row].name for row in np.flatnonzero(flags[:, index])]} for index in removed],
    )
    flagged_by = {detector.name: np.flatnonzero(flags[row]) for row, detector in enumerate(detector_list)}
    logger.info("sanitize: kept %d, quarantined %d of %d samples", len(kept), len(removed), total)
    return SanitizeResult(kept, removed, reasons, scores, record_ids, flagged_by)

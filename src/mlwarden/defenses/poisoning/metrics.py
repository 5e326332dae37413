"""Detection precision, recall and ranking quality against the known poisoned indices."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from ...errors import ParameterError

__all__ = ["detection_metrics"]


def _as_mask(value: Any, total: int, name: str) -> np.ndarray:
    array = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
    if array.dtype == bool:
        if array.shape != (total,):
            raise ParameterError(f"detection_metrics: {name} mask must have shape ({total},), got {array.shape}", value=array.shape)
        return array
    if array.size and (not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() >= total):
        raise ParameterError(
            f"detection_metrics: {name} must be a bool mask or indices in [0, {total}), got {array.dtype} values",
            value=name,
        )
    mask = np.zeros(total, dtype=bool)
    mask[array.astype(np.int64)] = True
    return mask


def detection_metrics(flagged: Any, poisoned: Any, total: int, scores: Any = None) -> dict[str, Any]:
    """Return precision, recall and F1 of the flagged samples against the poisoned ones.

    Parameters
    ----------
    flagged, poisoned : bool mask (total,) or integer indices
    total : int
        Number of samples in the set.
    scores : array (total,), optional
        Suspicion scores (higher is more suspect); adds the ROC AUC of the ranking.

    Returns
    -------
    dict
        ``flagged``, ``poisoned``, ``true_positives`` (counts), ``precision``
        (None when nothing is flagged), ``recall`` (None when nothing is
        poisoned), ``f1`` (None when either is None) and ``auc`` (None
        without scores or when one group is empty).
    """
    flagged_mask = _as_mask(flagged, total, "flagged")
    poisoned_mask = _as_mask(poisoned, total, "poisoned")
    hits = int((flagged_mask & poisoned_mask).sum())
    flagged_count, poisoned_count = int(flagged_mask.sum()), int(poisoned_mask.sum())
    precision = hits / flagged_count if flagged_count else None
    recall = hits / poisoned_count if poisoned_count else None
    f1 = None
    if precision is not None and recall is not None:
        f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    auc = None
    if scores is not None and 0 < poisoned_count < total:
        values = np.asarray(scores, dtype=np.float64)
        auc = float(roc_auc_score(poisoned_mask, np.nan_to_num(values, posinf=np.finfo(np.float64).max)))
    return {
        "flagged": flagged_count,
        "poisoned": poisoned_count,
        "true_positives": hits,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auc": auc,
    }

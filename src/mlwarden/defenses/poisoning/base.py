"""Base class of detectors of poisoned training samples, with scikit-learn's outlier-detector interface.

A detector is fitted on a (possibly poisoned) training set in some feature
space and then scores samples: higher scores are more suspect, the same sign
as the evasion detectors of :mod:`mlwarden.defenses.evasion`. Every detector
here works per class, because poison hides inside the class it claims:
a flipped label is an outlier only among the samples of its new class.

- :meth:`PoisonDetector.fit` learns the per-class model and the per-class
  thresholds ``thresholds_``, and stores ``training_scores_``: the scores of
  the fitted samples themselves, computed so that a sample does not vouch
  for itself (out-of-fold probabilities, neighbours other than the sample).
- :meth:`~PoisonDetector.score_samples` scores new samples;
  :meth:`~PoisonDetector.decision_function` subtracts the threshold of each
  sample's class; :meth:`~PoisonDetector.predict` flags positive decisions.
- :meth:`~PoisonDetector.fit_predict` flags the fitted samples, the usual use
  when the training set itself is under suspicion.

Features may be (N, D) or convolutional maps (N, C, H, W); maps are
flattened so that every channel and position is used.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np

from ..._validation import check_real, owner_of
from ...errors import DataError, ParameterError
from ...threat import DefenseProfile, Posture, Stage
from .features import flatten_features

__all__ = ["PoisonDetector", "check_labels", "check_contamination", "threshold_for_count"]

logger = logging.getLogger(__name__)


def check_labels(labels: Any, owner: str, count: int) -> np.ndarray:
    """Return labels as int64 NumPy (count,) after checking them."""
    array = labels.detach().cpu().numpy() if hasattr(labels, "detach") else np.asarray(labels)
    if array.shape != (count,):
        raise ParameterError(f"{owner}: labels must have shape ({count},), got {array.shape}", value=array.shape)
    if count and not np.issubdtype(array.dtype, np.integer):
        raise ParameterError(f"{owner}: labels must be integer class indices, got dtype {array.dtype}", value=array.dtype)
    return array.astype(np.int64, copy=False)


def check_contamination(value: Any, owner: str) -> float | str:
    """Return ``"auto"`` or a fraction in (0, 0.5]."""
    if value == "auto":
        return "auto"
    return check_real(value, "contamination", owner, low=0.0, high=0.5, low_inclusive=False)


class PoisonDetector:
    """A per-class detector of poisoned samples.

    Parameters
    ----------
    contamination : "auto" or float, default "auto"
        ``"auto"`` uses the detector's own rule for the threshold of each
        class (documented by each subclass). A float in (0, 0.5] flags that
        fraction of the fitted samples of every class instead.

    Attributes
    ----------
    classes_ : numpy.ndarray
        The labels seen by :meth:`fit`.
    n_features_in_ : int
        Number of features after flattening.
    thresholds_ : numpy.ndarray
        One threshold per class of ``classes_``; scores above it are flagged.
        A class with nothing to flag has threshold +inf.
    training_scores_ : numpy.ndarray
        Scores of the fitted samples, (N,).

    Class attributes
    ----------------
    name : str
        Name used in plans, reports and ``scan-data`` reasons.
    reason : str
        Why a flagged sample is suspect, in words, for reports.
    known_bypass : str
        The adaptive attack this detector is known to fall to.
    """

    name: ClassVar[str] = "detector"
    reason: ClassVar[str] = "suspect"
    known_bypass: ClassVar[str] = ""
    profile: ClassVar[DefenseProfile] = DefenseProfile(Posture.REACTIVE, Stage.TRAINING, ("poisoning",))

    def __init__(self, *, contamination: float | str = "auto") -> None:
        self.contamination = check_contamination(contamination, type(self).__name__)
        self.classes_: np.ndarray | None = None
        self.n_features_in_: int | None = None
        self.thresholds_: np.ndarray | None = None
        self.training_scores_: np.ndarray | None = None

    # --- for subclasses -------------------------------------------------------------

    def _fit(self, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Fit on (N, D) features and return the scores of the fitted samples."""
        raise NotImplementedError

    def _score(self, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Return the scores of new samples."""
        raise NotImplementedError

    def _auto_threshold(self, label: int, scores: np.ndarray) -> float:
        """Return the threshold of one class under the detector's own rule."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """Return the constructor settings, as stored in reports."""
        return {key: value for key, value in vars(self).items() if not key.startswith("_") and not key.endswith("_")}

    def __repr__(self) -> str:
        inner = ", ".join(f"{key}={value!r}" for key, value in self.settings().items())
        return f"{type(self).__name__}({inner})"

    # --- scikit-learn interface -----------------------------------------------------

    def fit(self, features: Any, labels: Any) -> PoisonDetector:
        """Fit the per-class model and thresholds on the (possibly poisoned) set; return ``self``.

        Parameters
        ----------
        features : numpy.ndarray or torch.Tensor
            (N, D) or (N, C, H, W); every channel is used.
        labels : numpy.ndarray or torch.Tensor
            int (N,), the labels as given (possibly flipped).

        Raises
        ------
        ParameterError
            The features or labels have the wrong shape or type.
        DataError
            A class has too few samples for the detector.
        """
        owner = owner_of(self)
        labels_array = check_labels(labels, owner, _length(features))
        flat = flatten_features(features, owner, len(labels_array))
        if len(flat) == 0:
            raise DataError(f"{owner}: cannot fit on an empty set", value=0)
        self.classes_ = np.unique(labels_array)
        self.n_features_in_ = flat.shape[1]
        scores = np.asarray(self._fit(flat, labels_array), dtype=np.float64)
        self.training_scores_ = scores
        thresholds = np.empty(len(self.classes_))
        for position, label in enumerate(self.classes_):
            class_scores = scores[labels_array == label]
            if self.contamination == "auto":
                thresholds[position] = self._auto_threshold(int(label), class_scores)
            else:
                count = max(1, int(round(float(self.contamination) * len(class_scores))))
                thresholds[position] = threshold_for_count(class_scores, count)
        self.thresholds_ = thresholds
        flagged = int((scores > thresholds[np.searchsorted(self.classes_, labels_array)]).sum())
        logger.info("%s fitted on %d samples of %d classes: %d flagged", self.name, len(flat), len(self.classes_), flagged)
        return self

    def score_samples(self, features: Any, labels: Any) -> np.ndarray:
        """Return the suspicion score of each sample, (N,); higher is more suspect."""
        flat, labels_array = self._check_new(features, labels)
        return np.asarray(self._score(flat, labels_array), dtype=np.float64)

    def decision_function(self, features: Any, labels: Any) -> np.ndarray:
        """Return score minus the threshold of the sample's class; positive means flagged."""
        flat, labels_array = self._check_new(features, labels)
        return np.asarray(self._score(flat, labels_array), dtype=np.float64) - self.threshold_of(labels_array)

    def predict(self, features: Any, labels: Any) -> np.ndarray:
        """Return a bool vector (N,), True for samples flagged as poisoned."""
        return self.decision_function(features, labels) > 0

    def fit_predict(self, features: Any, labels: Any) -> np.ndarray:
        """Fit on the set and return the flags of its own samples, from ``training_scores_``."""
        self.fit(features, labels)
        return self.training_decisions(labels) > 0

    def training_decisions(self, labels: Any) -> np.ndarray:
        """Return the decisions of the fitted samples, given their labels in fitting order."""
        scores = self._require_fitted()
        return scores - self.threshold_of(check_labels(labels, type(self).__name__, len(scores)))

    def threshold_of(self, labels: np.ndarray) -> np.ndarray:
        """Return the threshold of each label's class.

        Raises
        ------
        DataError
            A label was not seen by :meth:`fit`.
        """
        self._require_fitted()
        assert self.classes_ is not None and self.thresholds_ is not None  # set together by fit
        positions = np.searchsorted(self.classes_, labels)
        clipped = np.minimum(positions, len(self.classes_) - 1)
        unseen = self.classes_[clipped] != labels
        if unseen.any():
            label = int(labels[unseen][0])
            raise DataError(
                f"{type(self).__name__}: class {label} was not in the fitted data (classes {self.classes_.tolist()}); "
                "refit on data that covers every class",
                value=label,
            )
        return self.thresholds_[clipped]

    # --- helpers --------------------------------------------------------------------

    def _require_fitted(self) -> np.ndarray:
        if self.training_scores_ is None:
            raise ParameterError(f"{type(self).__name__} is not fitted; call fit(features, labels) first", value=None)
        return self.training_scores_

    def _check_new(self, features: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
        self._require_fitted()
        owner = owner_of(self)
        labels_array = check_labels(labels, owner, _length(features))
        flat = flatten_features(features, owner, len(labels_array))
        if flat.shape[1] != self.n_features_in_:
            raise ParameterError(
                f"{owner}: features have {flat.shape[1]} values per sample after flattening, but the detector was "
                f"fitted on {self.n_features_in_}; use the same layer and shape as in fit",
                value=flat.shape[1],
            )
        self.threshold_of(labels_array)
        return flat, labels_array

    def _class_rows(self, labels: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Return (label, row indices) for every fitted class present in ``labels``."""
        assert self.classes_ is not None
        return [(int(label), np.flatnonzero(labels == label)) for label in self.classes_ if (labels == label).any()]


def _length(features: Any) -> int:
    shape = getattr(features, "shape", None)
    if not shape:
        raise ParameterError(
            f"features must be a NumPy array or torch tensor of shape (N, D) or (N, C, H, W), got {type(features).__name__}",
            value=type(features),
        )
    return int(shape[0])


def threshold_for_count(scores: np.ndarray, count: int) -> float:
    """Return a threshold that flags the ``count`` highest scores (+inf when ``count`` is 0).

    It lies midway between the last flagged and the first kept score, so
    samples tied at the boundary stay kept.
    """
    if count <= 0 or len(scores) == 0:
        return float("inf")
    ordered = np.sort(scores)[::-1]
    if count >= len(ordered):
        return float(ordered[-1]) - 1.0
    return float((ordered[count - 1] + ordered[count]) / 2)

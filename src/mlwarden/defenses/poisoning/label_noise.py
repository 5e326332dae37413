"""Label-noise detection from out-of-fold predicted probabilities, in the style of confident learning.

A classifier is fitted K times, each time without one fold, so every sample
gets probabilities from a model that never saw its (possibly flipped) label.
Per class j, the threshold t_j is the mean probability of class j over the
samples labeled j. A sample labeled i is counted as confidently belonging to
class j when p_j >= t_j (the largest such p_j when several pass). The
counts form the confident joint C[i, j]; calibrated so that each row sums
to the class's size, its off-diagonal row sum estimates how many labels of
class i are wrong. That many samples of class i, those with the lowest
normalized margin p_i - max_{k != i} p_k, are flagged.

The score is the negated normalized margin, in [-1, 1]: high when the model
prefers another class to the given label.

Reference: C. G. Northcutt, L. Jiang, I. L. Chuang, "Confident learning:
estimating uncertainty in dataset labels", Journal of Artificial
Intelligence Research 70, 2021.

Limitations: it finds labels that disagree with the features, so it misses
clean-label poisons and backdoor samples whose trigger the classifier
learns. Flips that are systematic (all of class i to class j) and frequent
enough shift the class thresholds and are partly missed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..._validation import check_int, owner_of
from ...errors import DataError, ParameterError
from .base import PoisonDetector, threshold_for_count
from .features import flatten_features

__all__ = ["LabelNoiseDetector", "confident_joint", "out_of_fold_probabilities"]


def _default_classifier() -> Any:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


def out_of_fold_probabilities(
    estimator: Any, features: np.ndarray, labels: np.ndarray, folds: int, seed: int, num_classes: int
) -> np.ndarray:
    """Return (N, num_classes) probabilities, each row from a clone fitted without that row's fold.

    Raises
    ------
    DataError
        A class has fewer samples than ``folds``, so stratified folds are impossible.
    """
    counts = np.bincount(labels, minlength=num_classes)
    present = counts[counts > 0]
    if present.min() < folds:
        rare = int(np.flatnonzero((counts > 0) & (counts < folds))[0])
        raise DataError(
            f"class {rare} has {int(counts[rare])} samples, fewer than folds={folds}; lower folds or add samples",
            value=rare,
        )
    probabilities = np.zeros((len(labels), num_classes))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train_rows, held_rows in splitter.split(features, labels):
        model = clone(estimator).fit(features[train_rows], labels[train_rows])
        probabilities[np.ix_(held_rows, model.classes_)] = model.predict_proba(features[held_rows])
    return probabilities


def confident_joint(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Return the calibrated confident joint (K, K): rows are given labels, columns the confident classes."""
    classes = probabilities.shape[1]
    counts = np.bincount(labels, minlength=classes)
    thresholds = np.array(
        [probabilities[labels == j, j].mean() if counts[j] else np.inf for j in range(classes)]
    )
    above = probabilities >= thresholds
    masked = np.where(above, probabilities, -np.inf)
    confident = masked.argmax(1)
    has_confident = above.any(1)
    joint = np.zeros((classes, classes))
    np.add.at(joint, (labels[has_confident], confident[has_confident]), 1)
    row_sums = joint.sum(1, keepdims=True)
    scale = np.divide(counts[:, None], row_sums, out=np.zeros_like(row_sums), where=row_sums > 0)
    return joint * scale


class LabelNoiseDetector(PoisonDetector):
    """Flag labels that out-of-fold predictions contradict (confident learning, prune by class).

    Parameters
    ----------
    contamination : "auto" or float, default "auto"
        ``"auto"`` flags, in each class, as many samples as the confident
        joint estimates to be mislabeled. A float flags that fraction per class.
    estimator : scikit-learn classifier, optional
        Any classifier with ``predict_proba``; default standardization then
        multinomial logistic regression.
    folds : int, default 5
    seed : int, default 0

    Attributes
    ----------
    probabilities_ : numpy.ndarray
        Out-of-fold probabilities of the fitted samples, (N, K).
    confident_joint_ : numpy.ndarray
        Calibrated confident joint, (K, K).
    """

    name = "label-noise"
    reason = "its label disagrees with out-of-fold predictions (confident learning)"
    known_bypass = "clean-label poisons and backdoors, whose labels match what the classifier learns"

    def __init__(self, *, contamination: float | str = "auto", estimator: Any = None, folds: int = 5, seed: int = 0) -> None:
        super().__init__(contamination=contamination)
        owner = owner_of(self)
        estimator = _default_classifier() if estimator is None else estimator
        if not (hasattr(estimator, "fit") and hasattr(estimator, "predict_proba")):
            raise ParameterError(
                f"{owner}: estimator must be a scikit-learn classifier with predict_proba, got {type(estimator).__name__}",
                value=type(estimator).__name__,
            )
        self._estimator = estimator
        self.estimator = type(estimator).__name__
        self.folds = check_int(folds, "folds", owner, low=2)
        self.seed = check_int(seed, "seed", owner)
        self.probabilities_: np.ndarray | None = None
        self.confident_joint_: np.ndarray | None = None
        self._model: Any = None
        self._issue_counts: np.ndarray | None = None

    def _fit(self, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        classes = int(labels.max()) + 1
        probabilities = out_of_fold_probabilities(self._estimator, features, labels, self.folds, self.seed, classes)
        self.probabilities_ = probabilities
        self.confident_joint_ = confident_joint(probabilities, labels)
        off_diagonal = self.confident_joint_.sum(1) - np.diag(self.confident_joint_)
        self._issue_counts = np.rint(off_diagonal).astype(np.int64)
        self._model = clone(self._estimator).fit(features, labels)
        return _negated_margin(probabilities, labels)

    def _score(self, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return _negated_margin(self.predict_proba(features), labels)

    def predict_proba(self, features: Any) -> np.ndarray:
        """Return class probabilities of new samples from the classifier fitted on all the data, (N, K)."""
        if self._model is None or self.confident_joint_ is None:
            raise ParameterError(f"{type(self).__name__} is not fitted; call fit(features, labels) first", value=None)
        flat = flatten_features(features, type(self).__name__)
        probabilities = np.zeros((len(flat), self.confident_joint_.shape[0]))
        probabilities[:, self._model.classes_] = self._model.predict_proba(flat)
        return probabilities

    def suggested_labels(self) -> np.ndarray:
        """Return the out-of-fold most probable class of each fitted sample."""
        if self.probabilities_ is None:
            raise ParameterError(f"{type(self).__name__} is not fitted; call fit(features, labels) first", value=None)
        return self.probabilities_.argmax(1)

    def _auto_threshold(self, label: int, scores: np.ndarray) -> float:
        assert self._issue_counts is not None
        return threshold_for_count(scores, int(self._issue_counts[label]))


def _negated_margin(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    rows = np.arange(len(labels))
    own = probabilities[rows, labels]
    others = probabilities.copy()
    others[rows, labels] = -np.inf
    return others.max(1) - own

"""Per-class outlier detection in feature space: isolation forest and k-nearest-neighbour distance.

A poisoned sample that claims class c but looks like class d sits far from
the other samples of class c in a good feature space. Both detectors fit one
model per class and score how isolated each sample is among its own class.

References: F. T. Liu, K. M. Ting, Z.-H. Zhou, "Isolation forest", ICDM 2008;
S. Ramaswamy, R. Rastogi, K. Shim, "Efficient algorithms for mining outliers
from large data sets", SIGMOD 2000 (distance to the k-th neighbour);
J. Steinhardt, P. W. Koh, P. Liang, "Certified defenses for data poisoning
attacks", NeurIPS 2017 (outlier removal as a poisoning defense).

Limitations: poisons placed inside the target class's distribution (clean-
label attacks with a small budget, or many flipped samples that form their
own dense cluster) are not outliers and pass. An attacker with access to
the detector places poisons just inside its threshold.
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import NearestNeighbors

from ..._validation import check_int, check_real, owner_of
from ...errors import DataError
from .base import PoisonDetector

__all__ = ["IsolationForestDetector", "KNNDistanceDetector"]


class IsolationForestDetector(PoisonDetector):
    """One isolation forest per class; the score is the forest's anomaly score in [0, 1].

    Parameters
    ----------
    contamination : "auto" or float, default "auto"
        ``"auto"`` flags scores above 0.5, the anomaly-score threshold of
        the isolation-forest paper. A float flags that fraction per class.
    n_estimators : int, default 100
    seed : int, default 0
    """

    name = "isolation-forest"
    reason = "isolated from the other samples of its class (isolation forest)"
    known_bypass = "poisons crafted inside the class distribution, or clustered so they do not isolate"

    def __init__(self, *, contamination: float | str = "auto", n_estimators: int = 100, seed: int = 0) -> None:
        super().__init__(contamination=contamination)
        owner = owner_of(self)
        self.n_estimators = check_int(n_estimators, "n_estimators", owner, low=1)
        self.seed = check_int(seed, "seed", owner)
        self._forests: dict[int, IsolationForest] = {}

    def _fit(self, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        self._forests = {}
        scores = np.empty(len(labels))
        for label, rows in self._class_rows(labels):
            _require_samples(self, label, len(rows), 2)
            forest = IsolationForest(n_estimators=self.n_estimators, random_state=self.seed + label)
            self._forests[label] = forest.fit(features[rows])
            scores[rows] = -forest.score_samples(features[rows])
        return scores

    def _score(self, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        scores = np.empty(len(labels))
        for label, rows in self._class_rows(labels):
            scores[rows] = -self._forests[label].score_samples(features[rows])
        return scores

    def _auto_threshold(self, label: int, scores: np.ndarray) -> float:
        return 0.5


class KNNDistanceDetector(PoisonDetector):
    """Mean distance to the k nearest samples of the same class, divided by the class's median of it.

    Parameters
    ----------
    contamination : "auto" or float, default "auto"
        ``"auto"`` flags scores more than ``cutoff`` robust standard
        deviations (1.4826 times the median absolute deviation) above the
        class median. A float flags that fraction per class.
    n_neighbors : int, default 10
    cutoff : float, default 3.0
    """

    name = "knn"
    reason = "far from its nearest neighbours of the same class (k-NN distance)"
    known_bypass = "poisons placed in groups, so each has close neighbours among the others"

    def __init__(self, *, contamination: float | str = "auto", n_neighbors: int = 10, cutoff: float = 3.0) -> None:
        super().__init__(contamination=contamination)
        owner = owner_of(self)
        self.n_neighbors = check_int(n_neighbors, "n_neighbors", owner, low=1)
        self.cutoff = check_real(cutoff, "cutoff", owner, low=0.0, low_inclusive=False)
        self._indexes: dict[int, NearestNeighbors] = {}
        self._medians: dict[int, float] = {}

    def _fit(self, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        self._indexes, self._medians = {}, {}
        scores = np.empty(len(labels))
        for label, rows in self._class_rows(labels):
            _require_samples(self, label, len(rows), self.n_neighbors + 1)
            index = NearestNeighbors(n_neighbors=self.n_neighbors + 1).fit(features[rows])
            distances, _ = index.kneighbors(features[rows])
            # The first neighbour of a fitted sample is itself (distance 0), so it is left out.
            mean_distance = distances[:, 1:].mean(1)
            median = float(np.median(mean_distance)) or 1.0
            self._indexes[label], self._medians[label] = index, median
            scores[rows] = mean_distance / median
        return scores

    def _score(self, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        scores = np.empty(len(labels))
        for label, rows in self._class_rows(labels):
            distances, _ = self._indexes[label].kneighbors(features[rows], n_neighbors=self.n_neighbors)
            scores[rows] = distances.mean(1) / self._medians[label]
        return scores

    def _auto_threshold(self, label: int, scores: np.ndarray) -> float:
        median = float(np.median(scores))
        spread = 1.4826 * float(np.median(np.abs(scores - median)))
        return median + self.cutoff * spread


def _require_samples(detector: PoisonDetector, label: int, count: int, needed: int) -> None:
    if count < needed:
        raise DataError(
            f"{type(detector).__name__}: class {label} has {count} samples, but the detector needs at least {needed} "
            "per class; fit on more data or leave the class out",
            value=label,
        )

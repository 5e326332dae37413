"""Backdoor detection in a model's activations: spectral signatures and activation clustering.

A network trained on backdoored data learns a strong feature for the
trigger. In the penultimate activations of the target class, the poisoned
samples then form a separate group: they stand out along the top singular
direction of the class (spectral signatures) and fall into their own
cluster (activation clustering). Both detectors take the activations of
the model trained on the suspect data.

References: B. Tran, J. Li, A. Madry, "Spectral signatures in backdoor
attacks", NeurIPS 2018; B. Chen, W. Carvalho, N. Baracaldo, H. Ludwig,
B. Edwards, T. Lee, I. Molloy, B. Srivastava, "Detecting backdoor attacks on
deep neural networks by activation clustering", SafeAI workshop at AAAI 2019.

Departures from the papers, used when ``contamination="auto"``: a class
is suspect when its activations are spread much wider than the median
class's (poisons from other classes widen it) and one part of it explains
that width. The part flagged is the one whose removal brings the spread
down, not the smaller one. The papers
assume the poison is a minority of the target class, which fails once the
poison rate reaches the target class's share of the data (10% of a
ten-class set). Spectral signatures split the projections in two instead of
removing 1.5 times a known poison fraction; activation clustering reduces
dimensions with PCA instead of ICA.

Limitations: triggers designed to keep the activations of poisoned samples
inside the clean distribution (latent-separability-aware backdoors) evade
both. The variance test compares classes, so it needs three or more
classes of comparable spread, and a model trained long enough to have
learned the trigger as a separate feature; on an undertrained model the
two groups overlap and recall drops.
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score

from ..._validation import check_int, check_real, owner_of
from ...errors import DataError
from .base import PoisonDetector

__all__ = ["SpectralSignatureDetector", "ActivationClusteringDetector", "split_in_two"]


def split_in_two(values: np.ndarray) -> tuple[float, float, int]:
    """Split 1-D values into the two groups of least within-group variance (exact 1-D 2-means).

    Returns
    -------
    threshold : float
        Midpoint between the two groups.
    separation : float
        Distance between the group means over the pooled within-group
        standard deviation (about 2.7 for one Gaussian, large for two groups).
    upper_size : int
        Number of values above the threshold.
    """
    ordered = np.sort(values)
    count = len(ordered)
    if count < 2:
        return float(ordered[0]) if count else 0.0, 0.0, 0
    prefix = np.cumsum(ordered)
    prefix_squares = np.cumsum(ordered**2)
    lower_sizes = np.arange(1, count)
    upper_sizes = count - lower_sizes
    lower_sums, upper_sums = prefix[:-1], prefix[-1] - prefix[:-1]
    lower_squares, upper_squares = prefix_squares[:-1], prefix_squares[-1] - prefix_squares[:-1]
    within = (lower_squares - lower_sums**2 / lower_sizes) + (upper_squares - upper_sums**2 / upper_sizes)
    best = int(np.argmin(within))
    lower_mean, upper_mean = lower_sums[best] / lower_sizes[best], upper_sums[best] / upper_sizes[best]
    pooled = np.sqrt(max(within[best], 0.0) / count)
    separation = float((upper_mean - lower_mean) / pooled) if pooled > 0 else float("inf")
    threshold = float((ordered[best] + ordered[best + 1]) / 2)
    return threshold, separation, int(upper_sizes[best])


def _total_variance(features: np.ndarray) -> float:
    return float(features.var(0).sum()) if len(features) > 1 else 0.0


class _SplitDetector(PoisonDetector):
    """Shared rule of the two backdoor detectors: which classes are suspect, and which part of them.

    Each detector splits every class in two parts. The suspect part is the
    one whose removal leaves the class with the lower total variance (sum
    over features). A class is flagged when both

    - its total variance is at least ``variance_ratio`` times the median
      over classes (poisons drawn from other classes widen it), and
    - removing the suspect part divides its total variance by at least
      ``variance_reduction`` (one part explains the width).

    The first test alone flags naturally varied clean classes (sandals
    among Fashion-MNIST classes are 2.7 times the median), the second alone
    flags clean classes with two sub-types (trousers reach 2.9). The choice
    of part does not assume the poison is a minority, which it is not once
    the poison rate reaches the target class's share of the data.
    """

    def __init__(self, *, contamination: float | str, variance_ratio: float, variance_reduction: float, margin: float) -> None:
        super().__init__(contamination=contamination)
        owner = owner_of(self)
        self.variance_ratio = check_real(variance_ratio, "variance_ratio", owner, low=1.0)
        self.variance_reduction = check_real(variance_reduction, "variance_reduction", owner, low=1.0)
        self.margin = check_real(margin, "margin", owner, low=0.0)
        self.variance_ratios_: dict[int, float] = {}
        self.variance_reductions_: dict[int, float] = {}

    def _suspect_part(self, label: int, features: np.ndarray, in_first: np.ndarray) -> bool:
        """Record the class's variance reduction and return True when the first part is the suspect one."""
        total = _total_variance(features)
        without_first, without_second = _total_variance(features[~in_first]), _total_variance(features[in_first])
        first_is_suspect = without_first <= without_second
        remaining = without_first if first_is_suspect else without_second
        self.variance_reductions_[label] = total / remaining if remaining > 0 else float("inf")
        return first_is_suspect

    def _record_variances(self, features: np.ndarray, labels: np.ndarray) -> None:
        variances = {label: _total_variance(features[rows]) for label, rows in self._class_rows(labels)}
        median = float(np.median(list(variances.values()))) or 1.0
        self.variance_ratios_ = {label: value / median for label, value in variances.items()}
        self.variance_reductions_ = {}

    def flagged_classes(self) -> list[int]:
        """Return the classes that pass both tests of the ``"auto"`` rule."""
        return [
            label
            for label, ratio in self.variance_ratios_.items()
            if ratio >= self.variance_ratio and self.variance_reductions_.get(label, 0.0) >= self.variance_reduction
        ]

    def _auto_threshold(self, label: int, scores: np.ndarray) -> float:
        # The margin reaches past the split toward the clean part: poisons near the boundary are the ones
        # a retrained model would still learn the trigger from, and a few clean samples are cheap to lose.
        return -self.margin if label in self.flagged_classes() else float("inf")


class SpectralSignatureDetector(_SplitDetector):
    """Score samples by their projection on the top singular direction of their class's centered activations.

    The projections are split in two groups by exact 1-D 2-means. The score
    is the signed distance past the split toward the suspect group, in units
    of the pooled within-group standard deviation.

    Parameters
    ----------
    contamination : "auto" or float, default "auto"
        ``"auto"`` flags the suspect group of every suspect class.
        A float flags that fraction per class (the paper removes 1.5 times
        an assumed upper bound on the poison fraction of a class).
    variance_ratio, variance_reduction : float, default 2.0
        The two tests of a suspect class (see the module notes), each at least 1.
    margin : float, default 1.0
        Suspect classes are flagged from this many within-group standard
        deviations before the split on (measured on Fashion-MNIST LeNet
        activations: recall 0.995 against 0.935 at 0, for 17 clean samples
        of 2,000).
    """

    name = "spectral-signature"
    reason = "stands out along the top singular direction of its class's activations (spectral signature)"
    known_bypass = "backdoors trained to keep poisoned activations inside the clean distribution"

    def __init__(
        self,
        *,
        contamination: float | str = "auto",
        variance_ratio: float = 2.0,
        variance_reduction: float = 2.0,
        margin: float = 1.0,
    ) -> None:
        super().__init__(
            contamination=contamination, variance_ratio=variance_ratio, variance_reduction=variance_reduction, margin=margin
        )
        self._directions: dict[int, tuple[np.ndarray, np.ndarray, float, float, float]] = {}

    def _fit(self, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        self._directions = {}
        self._record_variances(features, labels)
        scores = np.empty(len(labels))
        for label, rows in self._class_rows(labels):
            if len(rows) < 3:
                raise DataError(f"{type(self).__name__}: class {label} has {len(rows)} samples; it needs at least 3", value=label)
            center = features[rows].mean(0)
            centered = features[rows] - center
            # The top right singular vector of the centered class matrix.
            _, _, right = np.linalg.svd(centered, full_matrices=False)
            direction = right[0]
            projections = centered @ direction
            threshold, _, _ = split_in_two(projections)
            upper = projections > threshold
            orientation = 1.0 if self._suspect_part(label, features[rows], upper) else -1.0
            spread = _within_std(projections, upper)
            self._directions[label] = (center, direction, threshold, orientation, spread)
            scores[rows] = orientation * (projections - threshold) / spread
        return scores

    def _score(self, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        scores = np.empty(len(labels))
        for label, rows in self._class_rows(labels):
            center, direction, threshold, orientation, spread = self._directions[label]
            projections = (features[rows] - center) @ direction
            scores[rows] = orientation * (projections - threshold) / spread
        return scores


class ActivationClusteringDetector(_SplitDetector):
    """Cluster each class's activations in two with k-means after PCA; flag the suspect cluster.

    The score is how much closer a sample is to the suspect cluster's center
    than to the other one's, over the class's median distance to its own
    center: positive inside the suspect cluster.

    Parameters
    ----------
    contamination : "auto" or float, default "auto"
        ``"auto"`` flags the suspect cluster of every suspect class.
        A float flags that fraction per class.
    variance_ratio, variance_reduction : float, default 2.0
        The two tests of a suspect class (see the module notes), each at least 1.
    margin : float, default 0.5
        Suspect classes are flagged from this score on, in units of the
        median distance to the own center. Larger values flag more. On a
        LeNet trained on 10,000 Fashion-MNIST images with 5% BadNets poison,
        recall and precision were 0.76 and 0.99 at 0, 0.89 and 0.97 at 0.5,
        and 1.00 and 0.93 at 1.0.
    n_components : int, default 10
        Dimensions kept by PCA before clustering.
    seed : int, default 0

    Attributes
    ----------
    silhouettes_ : dict
        Class -> silhouette score of its two clusters (on at most 2000
        samples), reported for diagnosis; the paper's alternative criterion.
    """

    name = "activation-clustering"
    reason = "falls in the suspect cluster of its class's activations (activation clustering)"
    known_bypass = "backdoors trained to keep poisoned activations inside the clean distribution"

    def __init__(
        self,
        *,
        contamination: float | str = "auto",
        variance_ratio: float = 2.0,
        variance_reduction: float = 2.0,
        margin: float = 0.5,
        n_components: int = 10,
        seed: int = 0,
    ) -> None:
        super().__init__(
            contamination=contamination, variance_ratio=variance_ratio, variance_reduction=variance_reduction, margin=margin
        )
        owner = owner_of(self)
        self.n_components = check_int(n_components, "n_components", owner, low=1)
        self.seed = check_int(seed, "seed", owner)
        self._models: dict[int, tuple[PCA, np.ndarray, np.ndarray, float]] = {}
        self.silhouettes_: dict[int, float] = {}

    def _fit(self, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        self._models, self.silhouettes_ = {}, {}
        self._record_variances(features, labels)
        scores = np.empty(len(labels))
        for label, rows in self._class_rows(labels):
            if len(rows) < 4:
                raise DataError(f"{type(self).__name__}: class {label} has {len(rows)} samples; it needs at least 4", value=label)
            components = min(self.n_components, features.shape[1], len(rows) - 1)
            pca = PCA(n_components=components, random_state=self.seed).fit(features[rows])
            reduced = pca.transform(features[rows])
            kmeans = KMeans(n_clusters=2, n_init=10, random_state=self.seed).fit(reduced)
            assignment = kmeans.labels_
            if len(np.unique(assignment)) < 2:
                self.silhouettes_[label] = 0.0
            else:
                sample = min(2000, len(rows))
                self.silhouettes_[label] = float(silhouette_score(reduced, assignment, sample_size=sample, random_state=self.seed))
            suspect = 0 if self._suspect_part(label, features[rows], assignment == 0) else 1
            suspect_center, other_center = kmeans.cluster_centers_[suspect], kmeans.cluster_centers_[1 - suspect]
            own_center = np.where((assignment == suspect)[:, None], suspect_center, other_center)
            scale = float(np.median(np.linalg.norm(reduced - own_center, axis=1))) or 1.0
            self._models[label] = (pca, suspect_center, other_center, scale)
            scores[rows] = _closer_to_first(reduced, suspect_center, other_center, scale)
        return scores

    def _score(self, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        scores = np.empty(len(labels))
        for label, rows in self._class_rows(labels):
            pca, suspect_center, other_center, scale = self._models[label]
            scores[rows] = _closer_to_first(pca.transform(features[rows]), suspect_center, other_center, scale)
        return scores


def _closer_to_first(reduced: np.ndarray, first: np.ndarray, second: np.ndarray, scale: float) -> np.ndarray:
    return (np.linalg.norm(reduced - second, axis=1) - np.linalg.norm(reduced - first, axis=1)) / scale


def _within_std(values: np.ndarray, upper: np.ndarray) -> float:
    """Return the pooled standard deviation of two groups of values, or 1 when it is zero."""
    spread = 0.0
    for group in (values[upper], values[~upper]):
        if len(group):
            spread += float(((group - group.mean()) ** 2).sum())
    spread = float(np.sqrt(spread / max(len(values), 1)))
    return spread if spread > 0 else 1.0

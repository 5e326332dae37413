"""Scan a labeled data set for suspect samples, shard by shard, with an exact global top-k.

The scan runs in two passes over shards (blocks of consecutive rows, each
knowing the global index of its first row):

1. :meth:`DataScanner.fit` draws a fit sample of at most ``fit_samples``
   rows, fits a PCA and every detector on it. The rows are those with the
   smallest hash of (seed, global index), so the sample does not depend on
   how the data is cut into shards or in which order shards arrive.
2. :meth:`DataScanner.score_shard` scores every row of a shard. A row of
   the fit sample gets the score the detector computed without trusting the
   row itself (out-of-fold, leave-self-out). Other rows are scored by the
   fitted detectors. Each detector's decision (score minus its class's
   threshold) is divided by the spread of its decisions on the fit sample,
   and a row's suspicion is the largest of these: above 0 means at least
   one detector flags it.

Because a row's suspicion depends only on the fitted scanner and the row,
the top k of the whole set is exactly the top k of the per-shard top k
lists (:func:`merge_top_k`), which lets another engine score shards in
parallel and merge. Ties are broken by the global index.

Classes with fewer than ``min_class_samples`` rows in the fit sample cannot
be modeled; their rows are reported with infinite suspicion and the reason.
"""

from __future__ import annotations

import heapq
import inspect
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from tqdm.auto import tqdm

from ..._validation import check_int
from ...errors import DataError, ParameterError
from .base import PoisonDetector
from .features import flatten_features
from .label_noise import LabelNoiseDetector
from .registry import POISON_DETECTORS, build_detector

__all__ = ["Shard", "Suspect", "ScanConfig", "ShardScores", "ScanReport", "DataScanner", "merge_top_k", "scan_arrays", "shards_of"]

logger = logging.getLogger(__name__)

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass
class Shard:
    """Consecutive rows of a data set: features (n, ...), int labels (n,), and the global index of the first row."""

    features: np.ndarray
    labels: np.ndarray
    offset: int = 0

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True, order=True)
class Suspect:
    """One suspect row. Ordering puts the most suspect first, then the lower global index."""

    sort_key: tuple[float, int] = field(repr=False)
    index: int = field(compare=False)
    score: float = field(compare=False)
    label: int = field(compare=False)
    reason: str = field(compare=False)
    detector: str = field(compare=False)
    suggested_label: int | None = field(compare=False, default=None)

    @classmethod
    def make(cls, index: int, score: float, label: int, reason: str, detector: str, suggested: int | None) -> Suspect:
        """Build a suspect with its sort key."""
        return cls((-score, index), index, score, label, reason, detector, suggested)


@dataclass(frozen=True)
class ScanConfig:
    """Settings of a scan.

    Attributes
    ----------
    detectors : tuple of str
        Names from :data:`~mlwarden.defenses.poisoning.registry.POISON_DETECTORS`.
    fit_samples : int
        Most rows used to fit the PCA and the detectors.
    components : int or None
        PCA dimensions the detectors see; None keeps the flattened features.
    min_class_samples : int
        Minimum number of rows of a class in the fit sample for the class to be modeled.
    top_k : int or None
        Most suspects reported; None reports every flagged row.
    seed : int
    """

    detectors: tuple[str, ...] = ("label-noise", "isolation-forest")
    fit_samples: int = 20000
    components: int | None = 50
    min_class_samples: int = 10
    top_k: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        owner = "ScanConfig"
        if not self.detectors:
            raise ParameterError(f"{owner}: detectors must name at least one of {', '.join(POISON_DETECTORS)}", value=self.detectors)
        for name in self.detectors:
            if name not in POISON_DETECTORS:
                raise ParameterError(
                    f"{owner}: unknown detector {name!r}; known detectors: {', '.join(POISON_DETECTORS)}", value=name
                )
        check_int(self.fit_samples, "fit_samples", owner, low=2)
        if self.components is not None:
            check_int(self.components, "components", owner, low=1)
        check_int(self.min_class_samples, "min_class_samples", owner, low=2)
        if self.top_k is not None:
            check_int(self.top_k, "top_k", owner, low=1)
        check_int(self.seed, "seed", owner)


@dataclass
class ShardScores:
    """Per-row results of one shard: suspicion, which detector decided it, and the suggested label (-1 if none)."""

    offset: int
    labels: np.ndarray
    suspicion: np.ndarray
    detector: np.ndarray
    suggested: np.ndarray
    flagged_by: np.ndarray


@dataclass
class ScanReport:
    """Result of a scan: the ranked suspects and summary figures (plain data, ready for JSON)."""

    suspects: list[Suspect]
    summary: dict[str, Any]


def row_keys(indices: np.ndarray, seed: int) -> np.ndarray:
    """Return a 64-bit hash of each global index (SplitMix64 finalizer), keyed by the seed."""
    with np.errstate(over="ignore"):
        value = (indices.astype(np.uint64) + np.uint64(seed & 0xFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        value = (value ^ (value >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        value = (value ^ (value >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return value ^ (value >> np.uint64(31))


def shards_of(features: Any, labels: Any, shard_size: int = 10000) -> list[Shard]:
    """Cut whole arrays into shards of ``shard_size`` rows."""
    shard_size = check_int(shard_size, "shard_size", "shards_of", low=1)
    features = features.detach().cpu().numpy() if hasattr(features, "detach") else np.asarray(features)
    labels = labels.detach().cpu().numpy() if hasattr(labels, "detach") else np.asarray(labels)
    if labels.shape != (len(features),):
        raise DataError(f"labels have shape {labels.shape}, expected ({len(features)},)", value=labels.shape)
    return [
        Shard(features[start : start + shard_size], labels[start : start + shard_size], start)
        for start in range(0, len(features), shard_size)
    ]


class DataScanner:
    """Fit detectors on a hash-chosen sample of a sharded data set, then score shards independently.

    Parameters
    ----------
    config : ScanConfig, optional
    detector_settings : dict, optional
        Detector name -> constructor settings, for example ``{"knn": {"n_neighbors": 5}}``.
    progress : bool or None
        Show progress bars; None shows them only on a terminal.
    """

    def __init__(
        self, config: ScanConfig | None = None, *, detector_settings: dict[str, dict[str, Any]] | None = None, progress: bool | None = None
    ) -> None:
        self.config = config or ScanConfig()
        self.progress = progress
        settings = detector_settings or {}
        self.detectors: list[PoisonDetector] = []
        for name in self.config.detectors:
            extra = dict(settings.get(name, {}))
            if "seed" in _parameters(POISON_DETECTORS[name]) and "seed" not in extra:
                extra["seed"] = self.config.seed
            self.detectors.append(build_detector(name, **extra))
        self.pca_: PCA | None = None
        self.fit_indices_: np.ndarray | None = None
        self.modeled_classes_: np.ndarray | None = None
        self.class_counts_: dict[int, int] = {}
        self.rows_seen_ = 0
        self._scales: list[float] = []
        self._training_decisions: np.ndarray | None = None
        self._training_suggested: np.ndarray | None = None

    # --- pass 1 -----------------------------------------------------------------------

    def fit(self, shards: Iterable[Shard]) -> DataScanner:
        """Draw the fit sample from the shards, fit the PCA and the detectors; return ``self``.

        Raises
        ------
        DataError
            The data has no rows, or no class has enough rows to be modeled.
        """
        config = self.config
        kept_keys = np.zeros(0, dtype=np.uint64)
        kept_index = np.zeros(0, dtype=np.int64)
        kept_features: np.ndarray | None = None
        kept_labels = np.zeros(0, dtype=np.int64)
        bar = tqdm(desc="sampling rows to fit", unit="row", disable=_disable(self.progress), leave=False)
        for shard in shards:
            features, labels = self._check_shard(shard)
            index = np.arange(shard.offset, shard.offset + len(labels), dtype=np.int64)
            keys = np.concatenate([kept_keys, row_keys(index, config.seed)])
            all_index = np.concatenate([kept_index, index])
            all_features = features if kept_features is None else np.concatenate([kept_features, features])
            all_labels = np.concatenate([kept_labels, labels])
            if len(keys) > config.fit_samples:
                # Smallest keys win; the global index breaks the (unlikely) ties, so the choice is exact.
                order = np.lexsort((all_index, keys))[: config.fit_samples]
            else:
                order = np.arange(len(keys))
            kept_keys, kept_index = keys[order], all_index[order]
            kept_features, kept_labels = all_features[order], all_labels[order]
            self.rows_seen_ += len(labels)
            bar.update(len(labels))
        bar.close()
        if kept_features is None or len(kept_labels) == 0:
            raise DataError("the data set has no rows to scan", value=0)

        order = np.argsort(kept_index)
        self.fit_indices_ = kept_index[order]
        fit_features, fit_labels = kept_features[order], kept_labels[order]
        classes, counts = np.unique(fit_labels, return_counts=True)
        self.class_counts_ = {int(c): int(n) for c, n in zip(classes, counts)}
        self.modeled_classes_ = classes[counts >= config.min_class_samples]
        if len(self.modeled_classes_) < 2 and any(isinstance(d, LabelNoiseDetector) for d in self.detectors):
            raise DataError(
                f"label-noise detection needs at least two classes with {config.min_class_samples} or more rows in the "
                f"fit sample; found {len(self.modeled_classes_)}",
                value=len(self.modeled_classes_),
            )
        if len(self.modeled_classes_) == 0:
            raise DataError(f"no class has {config.min_class_samples} or more rows in the fit sample", value=0)
        modeled = np.isin(fit_labels, self.modeled_classes_)
        reduced = self._fit_pca(fit_features[modeled])
        labels_modeled = fit_labels[modeled]

        decisions = np.full((len(self.detectors), len(fit_labels)), -np.inf)
        self._training_suggested = np.full(len(fit_labels), -1, dtype=np.int64)
        self._scales = []
        for row, detector in enumerate(tqdm(self.detectors, desc="fitting detectors", disable=_disable(self.progress), leave=False)):
            detector.fit(reduced, labels_modeled)
            own = detector.training_decisions(labels_modeled)
            decisions[row, modeled] = own
            self._scales.append(_spread(own))
            if isinstance(detector, LabelNoiseDetector):
                self._training_suggested[modeled] = detector.suggested_labels()
        self._training_decisions = decisions
        logger.info(
            "scanner fitted on %d of %d rows, %d classes modeled, detectors %s",
            len(fit_labels), self.rows_seen_, len(self.modeled_classes_), ", ".join(d.name for d in self.detectors),
        )
        return self

    # --- pass 2 -----------------------------------------------------------------------

    def score_shard(self, shard: Shard) -> ShardScores:
        """Return the suspicion of every row of a shard; depends only on the fitted scanner and the rows."""
        if self._training_decisions is None or self.fit_indices_ is None or self.modeled_classes_ is None:
            raise ParameterError("DataScanner is not fitted; call fit(shards) first", value=None)
        features, labels = self._check_shard(shard)
        count = len(labels)
        index = np.arange(shard.offset, shard.offset + count, dtype=np.int64)
        modeled = np.isin(labels, self.modeled_classes_)
        decisions = np.full((len(self.detectors), count), -np.inf)
        suggested = np.full(count, -1, dtype=np.int64)

        position = np.searchsorted(self.fit_indices_, index)
        in_fit = (position < len(self.fit_indices_)) & (self.fit_indices_[np.minimum(position, len(self.fit_indices_) - 1)] == index)
        fresh = modeled & ~in_fit
        if fresh.any():
            reduced = self._reduce(features[fresh])
            for row, detector in enumerate(self.detectors):
                decisions[row, fresh] = detector.decision_function(reduced, labels[fresh])
                if isinstance(detector, LabelNoiseDetector):
                    suggested[fresh] = detector.predict_proba(reduced).argmax(1)
        if in_fit.any():
            decisions[:, in_fit] = self._training_decisions[:, position[in_fit]]
            suggested[in_fit] = self._training_suggested[position[in_fit]] if self._training_suggested is not None else -1

        scaled = decisions / np.asarray(self._scales)[:, None]
        suspicion = scaled.max(0)
        detector_of = scaled.argmax(0)
        flagged_by = scaled > 0
        # Rows of classes too rare to model are suspect in themselves.
        suspicion[~modeled] = np.inf
        detector_of[~modeled] = -1
        return ShardScores(shard.offset, labels, suspicion, detector_of, suggested, flagged_by)

    def suspects(self, scores: ShardScores, k: int | None = None, class_names: Sequence[str] | None = None) -> list[Suspect]:
        """Return the flagged rows of a shard, most suspect first, at most ``k`` of them."""
        flagged = np.flatnonzero(scores.suspicion > 0)
        if k is not None and len(flagged) > k:
            keys = np.lexsort((flagged, -scores.suspicion[flagged]))
            flagged = flagged[keys[:k]]
        result = [self._suspect(scores, int(row), class_names) for row in flagged]
        return sorted(result)

    def _suspect(self, scores: ShardScores, row: int, class_names: Sequence[str] | None) -> Suspect:
        label = int(scores.labels[row])
        index = scores.offset + row
        suggested = int(scores.suggested[row])
        suggestion = suggested if suggested >= 0 and suggested != label else None
        if scores.detector[row] < 0:
            reason = (
                f"label {_name(label, class_names)} has only {self.class_counts_.get(label, 0)} rows in the fit sample, "
                f"fewer than {self.config.min_class_samples}, so no detector models it"
            )
            return Suspect.make(index, float(scores.suspicion[row]), label, reason, "rare-label", None)
        flagging = [self.detectors[position] for position in np.flatnonzero(scores.flagged_by[:, row])]
        parts = [detector.reason for detector in flagging]
        if suggestion is not None and any(isinstance(detector, LabelNoiseDetector) for detector in flagging):
            parts.append(f"suggested label {_name(suggestion, class_names)} instead of {_name(label, class_names)}")
        main = self.detectors[int(scores.detector[row])].name
        return Suspect.make(index, float(scores.suspicion[row]), label, "; ".join(parts), main, suggestion)

    # --- both passes --------------------------------------------------------------------

    def scan(
        self,
        shards: Callable[[], Iterable[Shard]] | Sequence[Shard],
        *,
        class_names: Sequence[str] | None = None,
    ) -> ScanReport:
        """Fit on one pass, score on a second, and return the exact global top-k with a summary.

        Parameters
        ----------
        shards : sequence of Shard, or a function returning a fresh iterable of them
            The data is read twice, so a one-shot iterator is not enough.
        class_names : sequence of str, optional
            Names used in reasons and the summary.
        """
        start = time.perf_counter()
        produce = shards if callable(shards) else (lambda: shards)
        self.fit(produce())
        partials: list[list[Suspect]] = []
        per_class: dict[int, list[int]] = {}
        per_detector = {detector.name: 0 for detector in self.detectors}
        flagged_total = 0
        bar = tqdm(total=self.rows_seen_, desc="scanning", unit="row", disable=_disable(self.progress), leave=False)
        for shard in produce():
            scores = self.score_shard(shard)
            partials.append(self.suspects(scores, self.config.top_k, class_names))
            flagged = scores.suspicion > 0
            flagged_total += int(flagged.sum())
            for row, detector in enumerate(self.detectors):
                per_detector[detector.name] += int(scores.flagged_by[row].sum())
            for label in np.unique(scores.labels):
                in_class = scores.labels == label
                counts = per_class.setdefault(int(label), [0, 0])
                counts[0] += int(in_class.sum())
                counts[1] += int((in_class & flagged).sum())
            bar.update(len(shard))
            bar.set_postfix(flagged=flagged_total)
        bar.close()
        suspects = merge_top_k(partials, self.config.top_k)
        summary = {
            "rows": self.rows_seen_,
            "flagged": flagged_total,
            "reported": len(suspects),
            "fit_rows": int(len(self.fit_indices_) if self.fit_indices_ is not None else 0),
            "detectors": [{"name": d.name, "settings": _plain(d.settings()), "flagged": per_detector[d.name]} for d in self.detectors],
            "classes": [
                {"label": label, "name": _name(label, class_names), "rows": rows, "flagged": flagged}
                for label, (rows, flagged) in sorted(per_class.items())
            ],
            "config": {
                "detectors": list(self.config.detectors),
                "fit_samples": self.config.fit_samples,
                "components": self.config.components,
                "min_class_samples": self.config.min_class_samples,
                "top_k": self.config.top_k,
                "seed": self.config.seed,
            },
            "seconds": time.perf_counter() - start,
        }
        logger.info("scan: %d of %d rows flagged, %d reported", flagged_total, self.rows_seen_, len(suspects))
        return ScanReport(suspects, summary)

    # --- helpers ----------------------------------------------------------------------

    def _check_shard(self, shard: Shard) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(shard, Shard):
            raise ParameterError(f"expected a Shard, got {type(shard).__name__}", value=type(shard))
        labels = np.asarray(shard.labels)
        if labels.ndim != 1 or not (labels.size == 0 or np.issubdtype(labels.dtype, np.integer)):
            raise DataError(f"shard at row {shard.offset}: labels must be integers of shape (n,), got {labels.dtype} {labels.shape}", value=shard.offset)
        features = flatten_features(shard.features, f"shard at row {shard.offset}", len(labels))
        return features, labels.astype(np.int64)

    def _fit_pca(self, features: np.ndarray) -> np.ndarray:
        components = self.config.components
        if components is None or components >= min(features.shape):
            self.pca_ = None
            return features
        self.pca_ = PCA(n_components=components, random_state=self.config.seed).fit(features)
        return self.pca_.transform(features)

    def _reduce(self, features: np.ndarray) -> np.ndarray:
        return features if self.pca_ is None else self.pca_.transform(features)


def merge_top_k(partials: Iterable[Sequence[Suspect]], k: int | None) -> list[Suspect]:
    """Merge per-shard suspect lists (each sorted, each holding its shard's top k) into the global top k.

    The result is exact: a row in the global top k is in its own shard's top k.
    """
    merged = heapq.merge(*[sorted(part) for part in partials])
    result = list(merged)
    return result if k is None else result[:k]


def scan_arrays(
    features: Any,
    labels: Any,
    *,
    config: ScanConfig | None = None,
    shard_size: int = 10000,
    class_names: Sequence[str] | None = None,
    progress: bool | None = None,
) -> ScanReport:
    """Scan whole arrays: a convenience wrapper around :class:`DataScanner` and :func:`shards_of`."""
    shards = shards_of(features, labels, shard_size)
    return DataScanner(config, progress=progress).scan(shards, class_names=class_names)


def _spread(decisions: np.ndarray) -> float:
    finite = decisions[np.isfinite(decisions)]
    if len(finite) == 0:
        return 1.0
    median = np.median(finite)
    spread = 1.4826 * float(np.median(np.abs(finite - median)))
    return spread if spread > 0 else (float(finite.std()) or 1.0)


def _name(label: int, class_names: Sequence[str] | None) -> str:
    if class_names is not None and 0 <= label < len(class_names):
        return f"{label} ({class_names[label]})"
    return str(label)


def _parameters(factory: Callable[..., Any]) -> set[str]:
    return set(inspect.signature(factory).parameters)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return repr(value)


def _disable(progress: bool | None) -> bool | None:
    return None if progress is None else not progress

"""Poisoning detectors: the scikit-learn interface, every channel of feature maps, label noise on real features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlwarden.attacks.poisoning import RandomLabelFlip
from mlwarden.defenses.poisoning import (
    ActivationClusteringDetector,
    IsolationForestDetector,
    KNNDistanceDetector,
    LabelNoiseDetector,
    PoisonDetector,
    QuarantineStore,
    SpectralSignatureDetector,
    detection_metrics,
    sanitize,
)
from mlwarden.errors import DataError, ParameterError

DETECTORS = [
    pytest.param(lambda: IsolationForestDetector(), id="isolation-forest"),
    pytest.param(lambda: KNNDistanceDetector(), id="knn"),
    pytest.param(lambda: SpectralSignatureDetector(), id="spectral-signature"),
    pytest.param(lambda: ActivationClusteringDetector(), id="activation-clustering"),
]


@pytest.mark.parametrize("make", DETECTORS)
def test_detector_uses_every_channel(make, feature_maps) -> None:  # type: ignore[no-untyped-def]
    maps, labels, poisoned = feature_maps
    detector: PoisonDetector = make()
    flagged = detector.fit_predict(maps, labels)
    metrics = detection_metrics(flagged, poisoned, len(labels), detector.training_scores_)
    assert metrics["auc"] >= 0.95
    assert metrics["recall"] >= 0.7
    assert metrics["precision"] >= 0.5


@pytest.mark.parametrize("make", DETECTORS)
def test_feature_map_equals_flattened(make, feature_maps) -> None:  # type: ignore[no-untyped-def]
    maps, labels, _ = feature_maps
    from_maps = make().fit(torch.from_numpy(maps), torch.from_numpy(labels))
    from_flat = make().fit(maps.reshape(len(maps), -1), labels)
    assert np.allclose(from_maps.training_scores_, from_flat.training_scores_)
    assert np.allclose(from_maps.score_samples(maps[:50], labels[:50]), from_flat.score_samples(maps[:50].reshape(50, -1), labels[:50]))


def test_first_channels_alone_show_nothing(feature_maps) -> None:  # type: ignore[no-untyped-def]
    maps, labels, poisoned = feature_maps
    detector = KNNDistanceDetector().fit(maps[:, :3], labels)
    metrics = detection_metrics(detector.training_decisions(labels) > 0, poisoned, len(labels), detector.training_scores_)
    assert metrics["auc"] < 0.7


def test_predict_matches_decision_function(feature_maps) -> None:  # type: ignore[no-untyped-def]
    maps, labels, _ = feature_maps
    detector = IsolationForestDetector(seed=1).fit(maps, labels)
    decisions = detector.decision_function(maps[:100], labels[:100])
    assert np.array_equal(detector.predict(maps[:100], labels[:100]), decisions > 0)
    scores = detector.score_samples(maps[:100], labels[:100])
    assert np.allclose(decisions, scores - detector.threshold_of(labels[:100]))


def test_contamination_flags_fraction_per_class(feature_maps) -> None:  # type: ignore[no-untyped-def]
    maps, labels, _ = feature_maps
    flagged = KNNDistanceDetector(contamination=0.1).fit_predict(maps, labels)
    assert [int(flagged[labels == label].sum()) for label in range(4)] == [20, 20, 20, 20]


@pytest.mark.parametrize("value", [0.0, 0.6, "most", None])
def test_contamination_rejects_invalid(value: object) -> None:
    with pytest.raises(ParameterError, match="contamination"):
        KNNDistanceDetector(contamination=value)  # type: ignore[arg-type]


def test_detector_errors(feature_maps) -> None:  # type: ignore[no-untyped-def]
    maps, labels, _ = feature_maps
    with pytest.raises(ParameterError, match="not fitted"):
        KNNDistanceDetector().predict(maps, labels)
    detector = KNNDistanceDetector().fit(maps, labels)
    with pytest.raises(DataError, match="class 9 was not in the fitted data"):
        detector.predict(maps[:2], np.array([0, 9]))
    with pytest.raises(ParameterError, match="fitted on 36"):
        detector.predict(maps[:2, :2], labels[:2])
    with pytest.raises(ParameterError, match=r"shape \(N, D\)"):
        detector.fit(np.zeros(10), np.zeros(10, dtype=np.int64))
    with pytest.raises(DataError, match="class 1 has 3 samples"):
        KNNDistanceDetector().fit(np.zeros((23, 2)), np.array([0] * 20 + [1] * 3))


def test_label_noise_finds_most_flips_on_fashion_features(lenet_features) -> None:  # type: ignore[no-untyped-def]
    features, labels = lenet_features
    poisoned = RandomLabelFlip(rate=0.1, seed=1).poison(features, labels)
    detector = LabelNoiseDetector()
    flagged = detector.fit_predict(features, poisoned.labels)
    metrics = detection_metrics(flagged, poisoned.indices, len(labels), detector.training_scores_)
    assert metrics["recall"] >= 0.85
    assert metrics["precision"] >= 0.5
    assert metrics["auc"] >= 0.95
    suggested = detector.suggested_labels()[poisoned.indices]
    assert float((suggested == poisoned.original_labels[poisoned.indices]).mean()) >= 0.7


def test_label_noise_flags_little_on_clean_labels(lenet_features) -> None:  # type: ignore[no-untyped-def]
    features, labels = lenet_features
    flagged = LabelNoiseDetector().fit_predict(features, labels)
    # The shipped LeNet is about 91% accurate, so some true labels disagree with the features.
    assert flagged.mean() < 0.12


def test_backdoor_detectors_flag_nothing_without_poison(lenet_features) -> None:  # type: ignore[no-untyped-def]
    features, labels = lenet_features
    for detector in (SpectralSignatureDetector(), ActivationClusteringDetector()):
        assert detector.fit_predict(features, labels).sum() == 0, detector.name


def test_detection_metrics_values() -> None:
    metrics = detection_metrics(np.array([0, 1, 2, 3]), np.array([2, 3, 4, 5, 6]), 10, scores=np.arange(10)[::-1])
    assert metrics["true_positives"] == 2
    assert metrics["precision"] == 0.5
    assert metrics["recall"] == 0.4
    assert metrics["f1"] == pytest.approx(2 * 0.5 * 0.4 / 0.9)
    empty = detection_metrics(np.zeros(5, dtype=bool), np.array([1]), 5)
    assert empty["precision"] is None
    assert empty["recall"] == 0.0
    with pytest.raises(ParameterError, match="indices in"):
        detection_metrics(np.array([7]), np.array([1]), 5)


def test_sanitize_records_every_removed_sample(feature_maps) -> None:  # type: ignore[no-untyped-def]
    maps, labels, poisoned = feature_maps
    store = QuarantineStore(":memory:")
    result = sanitize(maps, labels, [KNNDistanceDetector(), IsolationForestDetector()], quarantine=store, batch_id="train-v1")
    assert len(result.removed) > 0
    assert np.array_equal(np.sort(np.concatenate([result.kept, result.removed])), np.arange(len(labels)))
    records = store.records(batch_id="train-v1")
    assert sorted(record.index for record in records) == sorted(result.removed.tolist())
    assert all(record.reason.strip() for record in records)
    assert all(record.details["detectors"] for record in records)
    stored, stored_labels = store.samples([record.id for record in records])
    assert np.array_equal(stored, maps[[record.index for record in records]])
    assert np.array_equal(stored_labels, labels[[record.index for record in records]])
    assert set(poisoned.tolist()) <= set(result.removed.tolist())


def test_sanitize_requires_a_quarantine(feature_maps) -> None:  # type: ignore[no-untyped-def]
    maps, labels, _ = feature_maps
    with pytest.raises(ParameterError, match="always recorded"):
        sanitize(maps, labels, KNNDistanceDetector(), quarantine=None)  # type: ignore[arg-type]

"""The sharded scanning core: results independent of sharding, exact top-k merge, rare classes."""

from __future__ import annotations

import numpy as np
import pytest

from mlwarden.attacks.poisoning import RandomLabelFlip
from mlwarden.defenses.poisoning import DataScanner, ScanConfig, Shard, Suspect, detection_metrics, merge_top_k, scan_arrays, shards_of
from mlwarden.errors import DataError, ParameterError


@pytest.fixture(scope="module")
def flipped(lenet_features) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    features, labels = lenet_features
    result = RandomLabelFlip(rate=0.1, seed=2).poison(features[:1500], labels[:1500])
    return features[:1500], result.labels, result.indices


def _key(report) -> list[tuple[int, float]]:  # type: ignore[no-untyped-def]
    return [(suspect.index, round(suspect.score, 9)) for suspect in report.suspects]


def test_scan_independent_of_sharding(flipped) -> None:  # type: ignore[no-untyped-def]
    features, labels, _ = flipped
    config = ScanConfig(detectors=("label-noise", "knn"), fit_samples=1000, components=20)
    whole = scan_arrays(features, labels, config=config, shard_size=1500, progress=False)
    small = scan_arrays(features, labels, config=config, shard_size=170, progress=False)
    shuffled_shards = shards_of(features, labels, 300)[::-1]
    reordered = DataScanner(config, progress=False).scan(shuffled_shards)
    assert _key(whole) == _key(small)
    assert sorted(_key(whole)) == sorted(_key(reordered))
    assert whole.summary["flagged"] == small.summary["flagged"]


def test_scan_top_k_is_exact(flipped) -> None:  # type: ignore[no-untyped-def]
    features, labels, _ = flipped
    config = ScanConfig(detectors=("label-noise", "knn"), fit_samples=800, components=20)
    everything = scan_arrays(features, labels, config=config, shard_size=200, progress=False)
    top_config = ScanConfig(detectors=("label-noise", "knn"), fit_samples=800, components=20, top_k=25)
    top = scan_arrays(features, labels, config=top_config, shard_size=200, progress=False)
    assert _key(top) == _key(everything)[:25]
    scores = [suspect.score for suspect in everything.suspects]
    assert scores == sorted(scores, reverse=True)


def test_scan_finds_flipped_labels(flipped) -> None:  # type: ignore[no-untyped-def]
    features, labels, poisoned = flipped
    report = scan_arrays(features, labels, config=ScanConfig(detectors=("label-noise",), components=None), progress=False)
    metrics = detection_metrics(np.array([suspect.index for suspect in report.suspects]), poisoned, len(labels))
    assert metrics["recall"] >= 0.8
    assert metrics["precision"] >= 0.5
    suggested = [suspect for suspect in report.suspects if suspect.index in set(poisoned.tolist())]
    assert all("suggested label" in suspect.reason for suspect in suggested if suspect.suggested_label is not None)


def test_merge_top_k_equals_global_sort() -> None:
    generator = np.random.default_rng(0)
    scores = generator.normal(size=300)
    scores[[5, 250]] = scores[17]
    everything = [Suspect.make(index, float(score), 0, "r", "d", None) for index, score in enumerate(scores)]
    parts = [sorted(everything[start : start + 50])[:10] for start in range(0, 300, 50)]
    expected = sorted(everything, key=lambda suspect: (-suspect.score, suspect.index))[:10]
    assert merge_top_k(parts, 10) == expected


def test_rare_class_reported_with_reason() -> None:
    generator = np.random.default_rng(1)
    features = generator.normal(size=(203, 5))
    labels = np.array([0] * 100 + [1] * 100 + [7] * 3)
    report = scan_arrays(features, labels, config=ScanConfig(detectors=("knn",), components=None), progress=False)
    rare = [suspect for suspect in report.suspects if suspect.label == 7]
    assert [suspect.index for suspect in rare] == [200, 201, 202]
    assert all(np.isinf(suspect.score) and "only 3 rows" in suspect.reason for suspect in rare)


def test_scan_errors() -> None:
    with pytest.raises(ParameterError, match="unknown detector 'magic'"):
        ScanConfig(detectors=("magic",))
    with pytest.raises(DataError, match="no rows"):
        DataScanner(progress=False).fit([])
    with pytest.raises(ParameterError, match="not fitted"):
        DataScanner(progress=False).score_shard(Shard(np.zeros((2, 2)), np.zeros(2, dtype=np.int64)))

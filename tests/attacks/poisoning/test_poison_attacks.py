"""Poisoning attacks: label flips, BadNets, feature collision, tabular attacks and streams."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mlwarden.attacks.poisoning import (
    BadNetsBackdoor,
    DriftStream,
    FeatureCollision,
    LossMaximizingStream,
    MarginLabelFlip,
    RandomLabelFlip,
    SearchLabelFlip,
    TabularBackdoor,
    TargetedLabelFlip,
    get_poisoning_entry,
    is_poisoning_attack,
)
from mlwarden.defenses.poisoning import extract_features
from mlwarden.errors import ParameterError, PlanError


@pytest.fixture(scope="module")
def cancer() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    features, labels = load_breast_cancer(return_X_y=True)
    return tuple(train_test_split(features, labels, test_size=0.3, random_state=0, stratify=labels))  # type: ignore[return-value]


def _victim_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(train_x, train_y)
    return float((model.predict(test_x) == test_y).mean())


# --- label flips ---------------------------------------------------------------------------


@pytest.mark.parametrize("container", ["numpy", "torch"])
def test_random_flip_count_and_type(container: str) -> None:
    labels = np.arange(200) % 10
    inputs = np.zeros((200, 3))
    if container == "torch":
        labels, inputs = torch.from_numpy(labels), torch.from_numpy(inputs)
    result = RandomLabelFlip(rate=0.1, seed=3).poison(inputs, labels)
    assert len(result.indices) == 20
    assert type(result.labels) is type(labels)
    poisoned = np.asarray(result.labels)
    assert (poisoned[result.indices] != result.original_labels[result.indices]).all()
    untouched = np.setdiff1d(np.arange(200), result.indices)
    assert (poisoned[untouched] == result.original_labels[untouched]).all()
    assert result.inputs is inputs
    assert set(result.flipped().tolist()) == set(result.indices.tolist())


def test_random_flip_same_seed_same_poison() -> None:
    labels = np.arange(500) % 5
    first = RandomLabelFlip(rate=0.2, seed=7).poison(np.zeros((500, 1)), labels)
    second = RandomLabelFlip(rate=0.2, seed=7).poison(np.zeros((500, 1)), labels)
    other = RandomLabelFlip(rate=0.2, seed=8).poison(np.zeros((500, 1)), labels)
    assert np.array_equal(first.indices, second.indices)
    assert np.array_equal(first.labels, second.labels)
    assert not np.array_equal(first.indices, other.indices)


@pytest.mark.parametrize("rate", [-0.1, 1.5, "0.1", True])
def test_flip_rejects_invalid_rate(rate: object) -> None:
    with pytest.raises(ParameterError, match="rate"):
        RandomLabelFlip(rate=rate)  # type: ignore[arg-type]


def test_targeted_flip_source_to_target() -> None:
    labels = np.arange(300) % 3
    result = TargetedLabelFlip(rate=0.1, target_class=2, source_class=0).poison(np.zeros((300, 2)), labels)
    assert len(result.indices) == 30
    assert (result.original_labels[result.indices] == 0).all()
    assert (result.labels[result.indices] == 2).all()


def test_targeted_flip_too_few_sources() -> None:
    labels = np.array([0] * 5 + [1] * 95)
    with pytest.raises(ParameterError, match="needs 50 samples of class 0, but the data has only 5"):
        TargetedLabelFlip(rate=0.5, target_class=1, source_class=0).poison(np.zeros((100, 1)), labels)


def test_targeted_flip_same_classes_rejected() -> None:
    with pytest.raises(ParameterError, match="pick two different classes"):
        TargetedLabelFlip(rate=0.1, target_class=1, source_class=1)


# --- BadNets -------------------------------------------------------------------------------


def test_backdoor_stamps_and_relabels() -> None:
    images = torch.rand(100, 1, 28, 28) * 0.5
    labels = torch.arange(100) % 10
    attack = BadNetsBackdoor(rate=0.2, target_class=3, size=3)
    result = attack.poison(images, labels)
    assert len(result.indices) == 20
    assert (result.original_labels[result.indices] != 3).all()
    assert (result.labels[result.indices] == 3).all()
    poisoned = torch.from_numpy(result.indices)
    corner = result.inputs[poisoned][:, :, 24:27, 24:27]
    expected = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    assert torch.equal(corner, expected.expand_as(corner))
    clean = torch.from_numpy(np.setdiff1d(np.arange(100), result.indices))
    assert torch.equal(result.inputs[clean], images[clean])
    outside = result.inputs[poisoned].clone()
    outside[:, :, 24:27, 24:27] = images[poisoned][:, :, 24:27, 24:27]
    assert torch.equal(outside, images[poisoned])


def test_backdoor_custom_pattern_and_position() -> None:
    pattern = torch.full((2, 2), 0.7)
    attack = BadNetsBackdoor(rate=0.5, target_class=0, pattern=pattern, position=(0, 5))
    stamped = attack.apply_trigger(torch.zeros(4, 3, 8, 8))
    assert torch.equal(stamped[:, :, 0:2, 5:7], torch.full((4, 3, 2, 2), 0.7))
    assert float(stamped.sum()) == pytest.approx(4 * 3 * 4 * 0.7)


def test_backdoor_trigger_that_does_not_fit() -> None:
    attack = BadNetsBackdoor(rate=0.1, target_class=0, size=5, position=(10, 10))
    with pytest.raises(ParameterError, match="does not fit"):
        attack.apply_trigger(torch.zeros(1, 1, 12, 12))


def test_backdoor_numpy_inputs_stay_numpy() -> None:
    result = BadNetsBackdoor(rate=0.1, target_class=0).poison(np.zeros((20, 1, 8, 8), np.float32), np.arange(20) % 4)
    assert isinstance(result.inputs, np.ndarray)
    assert float(result.inputs.max()) == 1.0


# --- feature collision ---------------------------------------------------------------------


def test_feature_collision_keeps_labels_and_moves_features(lenet: torch.nn.Module, fashion_test) -> None:  # type: ignore[no-untyped-def]
    images, labels = fashion_test.images[:400], fashion_test.labels[:400]
    target_index = int((labels == 0).nonzero()[0])
    attack = FeatureCollision(lenet, images[target_index], base_class=6, rate=0.01, steps=60, step_size=0.02)
    result = attack.poison(images, labels)
    index = torch.from_numpy(result.indices)
    assert len(result.indices) == 4
    assert torch.equal(torch.as_tensor(result.labels), labels)
    assert float(result.inputs.min()) >= 0.0
    assert float(result.inputs.max()) <= 1.0
    with torch.no_grad():
        target_features = lenet.features(images[target_index : target_index + 1])
        before = (lenet.features(images[index]) - target_features).norm(dim=1)
        after = (lenet.features(result.inputs[index]) - target_features).norm(dim=1)
    assert bool((after < 0.5 * before).all())


@pytest.mark.slow
def test_feature_collision_flips_refit_head(lenet: torch.nn.Module, fashion_test) -> None:  # type: ignore[no-untyped-def]
    images, labels = fashion_test.images[:2000], fashion_test.labels[:2000]
    target_index = 2000 + int((fashion_test.labels[2000:] == 0).nonzero()[0])
    target = fashion_test.images[target_index]
    attack = FeatureCollision(lenet, target, base_class=6, rate=0.015, steps=100)
    result = attack.poison(images, labels)
    # Transfer learning: the victim keeps LeNet's features and refits only its last layer.
    target_features = extract_features(lenet, target[None])
    clean_head = LogisticRegression(max_iter=2000).fit(extract_features(lenet, images), labels.numpy())
    poisoned_head = LogisticRegression(max_iter=2000).fit(extract_features(lenet, result.inputs), labels.numpy())
    assert int(clean_head.predict(target_features)[0]) == 0
    assert int(poisoned_head.predict(target_features)[0]) == 6


def test_feature_collision_rejects_batch_target(lenet: torch.nn.Module) -> None:
    with pytest.raises(ParameterError, match="target must be one image"):
        FeatureCollision(lenet, torch.zeros(2, 1, 28, 28), base_class=0, rate=0.1)


# --- tabular attacks -----------------------------------------------------------------------


def test_margin_flip_hurts_more_than_random(cancer) -> None:  # type: ignore[no-untyped-def]
    train_x, test_x, train_y, test_y = cancer
    margin = MarginLabelFlip(rate=0.1).poison(train_x, train_y)
    random = RandomLabelFlip(rate=0.1).poison(train_x, train_y)
    assert len(margin.indices) == len(random.indices) == round(0.1 * len(train_y))
    clean_accuracy = _victim_accuracy(train_x, train_y, test_x, test_y)
    margin_accuracy = _victim_accuracy(train_x, margin.labels, test_x, test_y)
    random_accuracy = _victim_accuracy(train_x, random.labels, test_x, test_y)
    assert margin_accuracy < random_accuracy <= clean_accuracy + 0.02
    assert margin_accuracy < clean_accuracy - 0.05


def test_search_flip_never_worse_than_its_start(cancer) -> None:  # type: ignore[no-untyped-def]
    train_x, _, train_y, _ = cancer
    attack = SearchLabelFlip(rate=0.1, rounds=3, candidates=3)
    result = attack.poison(train_x, train_y)
    history = attack.search_history_
    assert len(history) == 4
    assert all(later <= earlier for earlier, later in zip(history, history[1:]))
    assert len(result.indices) == round(0.1 * len(train_y))


def test_tabular_attack_rejects_estimator_without_probabilities() -> None:
    class NoProbabilities:
        def fit(self, x: np.ndarray, y: np.ndarray) -> NoProbabilities:
            return self

    with pytest.raises(ParameterError, match="predict_proba"):
        MarginLabelFlip(rate=0.1, estimator=NoProbabilities())


def test_tabular_backdoor_plants_trigger(cancer) -> None:  # type: ignore[no-untyped-def]
    train_x, test_x, train_y, test_y = cancer
    attack = TabularBackdoor(rate=0.1, target_class=1, columns=[0, 5], values=[40.0, 0.5])
    result = attack.poison(train_x, train_y)
    assert np.allclose(result.inputs[result.indices][:, [0, 5]], [40.0, 0.5])
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(result.inputs, result.labels)
    triggered = attack.apply_trigger(test_x[test_y == 0])
    assert float((model.predict(triggered) == 1).mean()) > 0.8


# --- streams and registry ------------------------------------------------------------------


def test_loss_maximizing_stream_labels_least_likely(lenet: torch.nn.Module, fashion_test) -> None:  # type: ignore[no-untyped-def]
    stream = LossMaximizingStream(lenet, fashion_test.images[:200], batch_size=16, batches=2)
    batches = list(stream)
    assert len(batches) == 2
    inputs, labels = batches[0]
    with torch.no_grad():
        assert torch.equal(labels, lenet(inputs).argmin(1))


def test_drift_stream_shifts_more_each_batch(fashion_test) -> None:  # type: ignore[no-untyped-def]
    images, labels = fashion_test.images[:500], fashion_test.labels[:500]
    stream = DriftStream(images, labels, num_classes=10, start_fraction=0.0, growth=0.5, batch_size=200, batches=3)
    shifted = []
    for inputs, batch_labels in stream:
        true = torch.stack([labels[(images == image).flatten(1).all(1).nonzero()[0, 0]] for image in inputs[:50]])
        shifted.append(float((batch_labels[:50] != true).float().mean()))
    assert shifted[0] == 0.0
    assert shifted[0] < shifted[1] < shifted[2] == 1.0


def test_registry_keeps_poisoning_apart() -> None:
    assert is_poisoning_attack("backdoor")
    assert not is_poisoning_attack("fgsm")
    with pytest.raises(PlanError, match="has no setting 'eps'"):
        get_poisoning_entry("label-flip").split_settings({"eps": 0.1})
    attack_settings, assessment = get_poisoning_entry("backdoor").split_settings({"rate": 0.1, "epochs": 2})
    assert attack_settings == {"rate": 0.1, "target_class": 0}
    assert assessment == {"epochs": 2}

"""BadNets end to end: high backdoor success undefended, low after either detector's filtering."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlwarden.attacks.poisoning import BadNetsBackdoor, backdoor_success_rate
from mlwarden.data import Dataset
from mlwarden.defenses.poisoning import (
    ActivationClusteringDetector,
    SpectralSignatureDetector,
    detection_metrics,
    extract_features,
)
from mlwarden.models import LeNet5, TrainingConfig, evaluate_accuracy, train_model

# Measured on 2 cores: 10,000 images for 6 epochs is about the least training after which the
# LeNet has learned the trigger as its own feature. After 8 epochs on 6,000 images the poisoned
# and clean activations still overlap, and both detectors decline to flag a class.
TRAIN_IMAGES = 10000
EPOCHS = 6


def _train(images: torch.Tensor, labels: torch.Tensor, test: Dataset) -> torch.nn.Module:
    torch.manual_seed(0)
    model = LeNet5()
    data = Dataset(images, labels, test.class_names, "fashion-mnist", "train")
    train_model(model, data, test, TrainingConfig(epochs=EPOCHS, batch_size=64, seed=0), progress=False)
    return model.eval()


@pytest.mark.slow
def test_backdoor_defeated_by_filtering(fashion_train: Dataset, fashion_test: Dataset) -> None:
    train = fashion_train.subset(TRAIN_IMAGES)
    test = fashion_test.subset(2000)
    attack = BadNetsBackdoor(rate=0.05, target_class=0)
    poisoned = attack.poison(train.images, train.labels)

    victim = _train(poisoned.inputs, poisoned.labels, test)
    assert backdoor_success_rate(victim, attack, test.images, test.labels) >= 0.9
    assert evaluate_accuracy(victim, test.images, test.labels) >= 0.8

    features = extract_features(victim, poisoned.inputs)
    labels = poisoned.labels.numpy()
    clustering = ActivationClusteringDetector()
    flagged_by_clustering = clustering.fit_predict(features, labels)
    # Measured with torch on 2 threads: recall 0.888, precision 0.974. The exact figure moves with
    # the thread count; what must hold is that removing the flagged samples removes the backdoor.
    assert detection_metrics(flagged_by_clustering, poisoned.indices, len(labels))["recall"] >= 0.8
    assert_backdoor_removed(poisoned, flagged_by_clustering, attack, test)

    spectral = SpectralSignatureDetector()
    flagged = spectral.fit_predict(features, labels)
    metrics = detection_metrics(flagged, poisoned.indices, len(labels))
    assert spectral.flagged_classes() == [0]
    assert metrics["recall"] >= 0.9
    assert metrics["precision"] >= 0.8

    assert_backdoor_removed(poisoned, flagged, attack, test)


def assert_backdoor_removed(poisoned, flagged: np.ndarray, attack: BadNetsBackdoor, test: Dataset) -> None:
    """Retrain without the flagged samples; the trigger must stop working and accuracy must stay."""
    kept = torch.from_numpy(np.flatnonzero(~flagged))
    cleaned = _train(poisoned.inputs[kept], poisoned.labels[kept], test)
    assert backdoor_success_rate(cleaned, attack, test.images, test.labels) <= 0.2
    assert evaluate_accuracy(cleaned, test.images, test.labels) >= 0.8

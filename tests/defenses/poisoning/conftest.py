"""Fixtures of the poisoning-defense tests: LeNet features of real Fashion-MNIST images and synthetic feature maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlwarden.data import Dataset
from mlwarden.defenses.poisoning import extract_features


@pytest.fixture(scope="session")
def lenet_features(lenet: torch.nn.Module, fashion_test: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate LeNet features (84 values) and labels of the first 3,000 test images, which LeNet never trained on."""
    images, labels = fashion_test.images[:3000], fashion_test.labels[:3000]
    return extract_features(lenet, images), labels.numpy()


@pytest.fixture()
def feature_maps() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feature maps (800, 4, 3, 3) of four classes; 20 poisons of class 0 differ only in the last channel.

    Returns the maps, the labels and the poisoned indices. In the first
    three channels the poisons are ordinary samples.
    """
    generator = np.random.default_rng(0)
    maps = generator.normal(size=(800, 4, 3, 3))
    labels = np.repeat(np.arange(4), 200)
    poisoned = np.arange(0, 200, 10)
    maps[poisoned, 3] += 6.0 + 3.0 * generator.normal(size=(len(poisoned), 3, 3))
    return maps, labels, poisoned

"""Fixtures shared by the whole test suite: the real Fashion-MNIST data and the shipped LeNet."""

from __future__ import annotations

import pytest
import torch

from mlwarden.data import Dataset, load_dataset
from mlwarden.models import load_pretrained


@pytest.fixture(scope="session")
def fashion_test() -> Dataset:
    """The real Fashion-MNIST test split (Debian package dataset-fashion-mnist)."""
    return load_dataset("fashion-mnist", "test")


@pytest.fixture(scope="session")
def lenet() -> torch.nn.Module:
    """The shipped LeNet-5 trained on Fashion-MNIST, in eval mode."""
    model, _ = load_pretrained("lenet5")
    return model


@pytest.fixture(scope="session")
def small_batch(fashion_test: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 64 test images and labels."""
    return fashion_test.images[:64], fashion_test.labels[:64]

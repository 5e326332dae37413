"""Fixtures of the defense tests: the real Fashion-MNIST training split."""

from __future__ import annotations

import pytest

from mlwarden.data import Dataset, load_dataset


@pytest.fixture(scope="session")
def fashion_train() -> Dataset:
    """The real Fashion-MNIST training split (Debian package dataset-fashion-mnist)."""
    return load_dataset("fashion-mnist", "train")

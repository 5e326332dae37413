"""Data-set loaders: IDX files (MNIST, Fashion-MNIST), returned in mlwarden's tensor contract."""

from .datasets import (
    DATASET_NAMES,
    FASHION_MNIST_CLASSES,
    MNIST_CLASSES,
    Dataset,
    load_dataset,
    load_idx_directory,
)
from .idx import read_idx

__all__ = [
    "DATASET_NAMES",
    "FASHION_MNIST_CLASSES",
    "MNIST_CLASSES",
    "Dataset",
    "load_dataset",
    "load_idx_directory",
    "read_idx",
]

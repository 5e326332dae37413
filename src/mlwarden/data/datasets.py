"""Image data sets in mlwarden's tensor contract, and the loaders behind ``--data``.

A :class:`Dataset` holds float32 NCHW images in ``[0, 1]``, int64 labels and
the class names. :func:`load_dataset` takes a known name (``fashion-mnist``,
``mnist``) or a directory of IDX files.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .idx import read_idx

__all__ = [
    "Dataset",
    "load_dataset",
    "load_idx_directory",
    "FASHION_MNIST_CLASSES",
    "MNIST_CLASSES",
    "STANDARD_LOCATIONS",
    "DATASET_NAMES",
]

logger = logging.getLogger(__name__)

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_CLASSES = tuple(str(digit) for digit in range(10))

# Where Debian's packages dataset-fashion-mnist and dataset-mnist put the IDX files.
STANDARD_LOCATIONS = {
    "fashion-mnist": Path("/usr/share/datasets/fashion-mnist"),
    "mnist": Path("/usr/share/datasets/mnist"),
}
DATASET_NAMES = tuple(STANDARD_LOCATIONS)
_CLASS_NAMES = {"fashion-mnist": FASHION_MNIST_CLASSES, "mnist": MNIST_CLASSES}
_DEBIAN_PACKAGES = {"fashion-mnist": "dataset-fashion-mnist", "mnist": "dataset-mnist"}

# File stems of each split, as MNIST and Fashion-MNIST name them.
_SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass
class Dataset:
    """Images, labels and class names of one split of a data set.

    Attributes
    ----------
    images : torch.Tensor
        float32, shape (N, C, H, W), values in ``bounds``.
    labels : torch.Tensor
        int64, shape (N,).
    class_names : tuple of str
        Name of each class index.
    name : str
        The data set's name, or its directory.
    split : str
        ``"train"`` or ``"test"``.
    bounds : tuple of float
        Range of pixel values.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    name: str
    split: str
    bounds: tuple[float, float] = (0.0, 1.0)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    def scaled_to(self, bounds: tuple[float, float]) -> Dataset:
        """Return the data with its pixel values mapped linearly from ``self.bounds`` onto ``bounds``.

        A model that declares bounds such as (-1, 1) or (0, 255) expects its
        inputs there, while image files load into [0, 1]. Unscaled, an
        assessment would run on inputs outside the range the model was
        trained on. Equal ranges return the data itself.
        """
        if tuple(self.bounds) == tuple(bounds):
            return self
        (data_low, data_high), (low, high) = self.bounds, bounds
        logger.warning(
            "scaling the %s images from their range [%g, %g] to the model's bounds [%g, %g]",
            self.name,
            data_low,
            data_high,
            low,
            high,
        )
        images = low + (self.images - data_low) * ((high - low) / (data_high - data_low))
        return replace(self, images=images.clamp(low, high), bounds=(float(low), float(high)))

    def subset(self, count: int | None) -> Dataset:
        """Return the first ``count`` samples (all when ``count`` is None)."""
        if count is None or count >= len(self):
            return self
        return Dataset(
            self.images[:count], self.labels[:count], self.class_names, self.name, self.split, self.bounds
        )


def _find_file(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz", directory / stem.replace("-idx", ".idx")):
        if candidate.is_file():
            return candidate
    return None


def load_idx_directory(
    directory: str | Path, split: str = "test", *, class_names: tuple[str, ...] | None = None, name: str | None = None
) -> Dataset:
    """Load one split of an MNIST-style directory of IDX files.

    The directory holds ``{train,t10k}-{images-idx3,labels-idx1}-ubyte``,
    gzipped or not. Images must be uint8 with shape (N, H, W); they are
    scaled to ``[0, 1]``. When ``class_names`` is None, names come from a
    ``classes.txt`` file in the directory (one per line), else the directory is
    taken for Fashion-MNIST when its path contains "fashion", else the class
    indices are used as names.

    Raises
    ------
    DataError
        A file is missing or corrupt, or images and labels disagree in count
        or in range.
    """
    directory = Path(directory)
    if split not in _SPLIT_FILES:
        raise DataError(f"split must be 'train' or 'test', got {split!r}", value=split)
    if not directory.is_dir():
        raise DataError(f"data directory not found: {directory}; pass a directory of IDX files", value=str(directory))
    image_stem, label_stem = _SPLIT_FILES[split]
    image_path = _find_file(directory, image_stem)
    label_path = _find_file(directory, label_stem)
    for stem, found in ((image_stem, image_path), (label_stem, label_path)):
        if found is None:
            raise DataError(
                f"{directory} has no {stem} or {stem}.gz; an MNIST-style directory needs "
                f"{image_stem} and {label_stem} (gzipped or not)",
                value=str(directory),
            )
    assert image_path is not None and label_path is not None  # narrowed by the loop above
    images = read_idx(image_path, expected_ndim=3)
    labels = read_idx(label_path, expected_ndim=1)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise DataError(
            f"{image_path} and {label_path} must hold unsigned bytes (IDX type 0x08), got {images.dtype} and "
            f"{labels.dtype}",
            value=str(image_path),
        )
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{image_path} has {images.shape[0]} images but {label_path} has {labels.shape[0]} labels; "
            "the two files belong to different splits or one is corrupt",
            value=str(label_path),
        )
    class_names = class_names or _class_names_for(directory, int(labels.max(initial=0)) + 1)
    if labels.size and int(labels.max()) >= len(class_names):
        raise DataError(
            f"{label_path} contains label {int(labels.max())}, but the data set has only {len(class_names)} "
            "classes; the labels file is mislabeled or belongs to another data set",
            value=str(label_path),
        )
    tensor = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    logger.info("loaded %s split of %s: %d images of %s", split, directory, len(labels), tuple(images.shape[1:]))
    return Dataset(
        images=tensor.contiguous(),
        labels=torch.from_numpy(labels.astype(np.int64)),
        class_names=class_names,
        name=name or str(directory),
        split=split,
    )


def _class_names_for(directory: Path, count: int) -> tuple[str, ...]:
    listing = directory / "classes.txt"
    if listing.is_file():
        names = tuple(line.strip() for line in listing.read_text().splitlines() if line.strip())
        if names:
            return names
    if "fashion" in str(directory).lower():
        return FASHION_MNIST_CLASSES
    return tuple(str(index) for index in range(max(count, 10)))


def load_dataset(name_or_dir: str | Path = "fashion-mnist", split: str = "test") -> Dataset:
    """Load a data set by name (``fashion-mnist``, ``mnist``) or from a directory of IDX files.

    A name is looked up in the environment variable ``MLWARDEN_DATA_DIR``
    (a directory holding one folder per data set) and then in the standard
    location of its Debian package.

    Raises
    ------
    DataError
        The name is unknown and no such directory exists, or the files are
        missing or corrupt. The message names the Debian package to install.
    """
    text = str(name_or_dir)
    key = text.lower()
    if key in STANDARD_LOCATIONS:
        candidates = []
        if os.environ.get("MLWARDEN_DATA_DIR"):
            candidates.append(Path(os.environ["MLWARDEN_DATA_DIR"]) / key)
        candidates.append(STANDARD_LOCATIONS[key])
        for directory in candidates:
            if directory.is_dir():
                return load_idx_directory(directory, split, class_names=_CLASS_NAMES[key], name=key)
        raise DataError(
            f"data set {key!r} not found in {', '.join(str(c) for c in candidates)}; install it with "
            f"'apt-get install -y {_DEBIAN_PACKAGES[key]}', or pass --data DIR with a directory of its IDX files",
            value=text,
        )
    path = Path(text)
    if path.is_dir():
        return load_idx_directory(path, split)
    raise DataError(
        f"unknown data set {text!r}: pass one of {', '.join(DATASET_NAMES)} or an existing directory of IDX files",
        value=text,
    )

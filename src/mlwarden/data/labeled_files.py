"""Read a labeled data set from one file or IDX directory, in shards of consecutive rows.

``mlwarden scan-data`` accepts:

- an IDX directory (MNIST style, ``--split`` picks train or test) or an IDX
  images file whose labels file sits beside it (``...images-idx3-ubyte`` and
  ``...labels-idx1-ubyte``) or is given with ``labels``;
- a NumPy ``.npy`` array of samples (N, ...) with a labels ``.npy`` given
  with ``labels``, or a 2-D array whose label is the column ``label_column``
  (an integer index);
- a NumPy ``.npz`` archive with arrays ``images``, ``features``, ``x`` or
  ``X``, and ``labels`` or ``y``;
- a CSV file with a header row, numeric feature columns and the label
  column ``label_column`` (default ``label``). Labels that are all
  non-negative integers are used as class indices; otherwise each distinct
  text is a class, numbered in sorted order of the texts.

Unsigned-byte images are scaled to ``[0, 1]``. ``.npy`` files are memory
mapped and CSV files are read in chunks, so reading a shard costs memory
for that shard only. Nothing is ever unpickled.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .datasets import FASHION_MNIST_CLASSES, load_idx_directory
from .idx import read_idx

__all__ = ["LabeledFile", "open_labeled_file", "LABELED_FORMATS"]

logger = logging.getLogger(__name__)

LABELED_FORMATS = ("idx", "npy", "npz", "csv")
_NPZ_SAMPLES = ("images", "features", "x", "X")
_NPZ_LABELS = ("labels", "y")


@dataclass
class LabeledFile:
    """A labeled data set on disk, readable shard by shard (any number of times).

    Attributes
    ----------
    path : Path
    format : str
        One of :data:`LABELED_FORMATS`.
    rows : int
    sample_shape : tuple of int
        Shape of one sample: (C, H, W) for images, (D,) for table rows.
    class_names : tuple of str or None
        Names of the classes when the file gives them (text labels, known data sets).
    """

    path: Path
    format: str
    rows: int
    sample_shape: tuple[int, ...]
    class_names: tuple[str, ...] | None
    _samples: np.ndarray | None = None
    _labels: np.ndarray | None = None
    _csv_label_column: str | None = None
    _csv_feature_columns: list[int] | None = None
    _csv_classes: dict[str, int] | None = None

    @property
    def is_image(self) -> bool:
        """Whether samples are images (C, H, W)."""
        return len(self.sample_shape) == 3

    def shards(self, shard_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        """Yield ``(samples as float32, int64 labels, global index of the first row)`` per shard."""
        if self.format == "csv":
            yield from self._csv_shards(shard_size)
            return
        assert self._samples is not None and self._labels is not None  # set by open_labeled_file for array formats
        for start in range(0, self.rows, shard_size):
            block = np.asarray(self._samples[start : start + shard_size])
            yield _as_float(block), self._labels[start : start + shard_size].astype(np.int64), start

    def _csv_shards(self, shard_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        assert self._csv_feature_columns is not None and self._csv_classes is not None
        label_index = self._label_index()
        with self.path.open(newline="") as stream:
            reader = csv.reader(stream)
            next(reader)
            rows: list[list[str]] = []
            start = 0
            for line_number, row in enumerate(reader, start=2):
                if not row:
                    continue
                rows.append(row)
                if len(rows) == shard_size:
                    yield self._parse_csv(rows, label_index, line_number - len(rows) + 1) + (start,)
                    start += len(rows)
                    rows = []
            if rows:
                yield self._parse_csv(rows, label_index, start + 2) + (start,)

    def _label_index(self) -> int:
        with self.path.open(newline="") as stream:
            header = next(csv.reader(stream))
        return header.index(self._csv_label_column or "label")

    def _parse_csv(self, rows: list[list[str]], label_index: int, first_line: int) -> tuple[np.ndarray, np.ndarray]:
        assert self._csv_feature_columns is not None and self._csv_classes is not None
        width = len(self._csv_feature_columns) + 1
        for offset, row in enumerate(rows):
            if len(row) != width:
                raise DataError(
                    f"{self.path}, line {first_line + offset}: {len(row)} fields, expected {width} like the header",
                    value=first_line + offset,
                )
        try:
            features = np.array([[float(row[column]) for column in self._csv_feature_columns] for row in rows], dtype=np.float32)
        except ValueError as error:
            raise DataError(
                f"{self.path}: a feature value near line {first_line} is not a number ({error}); every column except "
                f"the label column {self._csv_label_column!r} must be numeric",
                value=str(self.path),
            ) from None
        labels = np.array([self._csv_classes[row[label_index].strip()] for row in rows], dtype=np.int64)
        return features, labels


def _as_float(block: np.ndarray) -> np.ndarray:
    if block.dtype == np.uint8:
        return block.astype(np.float32) / 255.0
    return block.astype(np.float32, copy=False)


def _image_shape(samples: np.ndarray) -> np.ndarray:
    """Return (N, H, W) images as (N, 1, H, W); other shapes unchanged."""
    return samples[:, None] if samples.ndim == 3 else samples


def open_labeled_file(
    path: str | Path,
    *,
    label_column: str | None = None,
    labels: str | Path | None = None,
    split: str = "train",
) -> LabeledFile:
    """Open a labeled data set for reading in shards; see the module notes for the formats.

    Raises
    ------
    DataError
        The path is missing or of an unknown format, the labels are missing
        or do not match the samples, or a CSV file is malformed.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data not found: {path}", value=str(path))
    if path.is_dir():
        data = load_idx_directory(path, split)
        return LabeledFile(path, "idx", len(data), tuple(data.images.shape[1:]), data.class_names, data.images.numpy(), data.labels.numpy())
    name = path.name.lower()
    if name.endswith(".csv"):
        return _open_csv(path, label_column or "label")
    if name.endswith(".npz"):
        return _open_npz(path)
    if name.endswith(".npy"):
        return _open_npy(path, labels, label_column)
    if "idx3" in name or "idx1" in name or name.endswith("ubyte") or name.endswith("ubyte.gz"):
        return _open_idx_file(path, labels)
    raise DataError(
        f"unknown data format of {path}; pass an IDX directory or file, a .npy, .npz or .csv file", value=str(path)
    )


def _checked(path: Path, samples: np.ndarray, labels: np.ndarray, fmt: str, class_names: tuple[str, ...] | None = None) -> LabeledFile:
    if labels.ndim != 1 or len(labels) != len(samples):
        raise DataError(
            f"{path}: {len(samples)} samples but labels of shape {labels.shape}; give one label per sample", value=str(path)
        )
    if samples.ndim < 2:
        raise DataError(f"{path}: samples must have shape (N, ...), got {samples.shape}", value=str(path))
    if len(labels) and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0):
        raise DataError(f"{path}: labels must be non-negative integers, got dtype {labels.dtype}", value=str(path))
    samples = _image_shape(samples)
    return LabeledFile(path, fmt, len(labels), tuple(samples.shape[1:]), class_names, samples, labels.astype(np.int64))


def _open_idx_file(path: Path, labels: str | Path | None) -> LabeledFile:
    if labels is None:
        guess = path.with_name(path.name.replace("images-idx3", "labels-idx1"))
        if guess == path or not guess.exists():
            raise DataError(f"no labels file beside {path}; pass --labels FILE", value=str(path))
        labels = guess
    images = read_idx(path, expected_ndim=3)
    label_array = read_idx(labels, expected_ndim=1)
    names = FASHION_MNIST_CLASSES if "fashion" in str(path).lower() else None
    return _checked(path, images, label_array, "idx", names)


def _open_npy(path: Path, labels: str | Path | None, label_column: str | None) -> LabeledFile:
    samples = np.load(path, mmap_mode="r", allow_pickle=False)
    if labels is not None:
        label_array = np.load(labels, allow_pickle=False)
        return _checked(path, samples, label_array, "npy")
    if label_column is None:
        raise DataError(
            f"{path} contains samples only; pass --labels FILE.npy, or --label-column INDEX for a 2-D table", value=str(path)
        )
    try:
        column = int(label_column)
    except ValueError:
        raise DataError(f"--label-column of a .npy table must be a column index, got {label_column!r}", value=label_column) from None
    if samples.ndim != 2 or not -samples.shape[1] <= column < samples.shape[1]:
        raise DataError(f"{path}: column {column} is not in a 2-D table of shape {samples.shape}", value=label_column)
    column %= samples.shape[1]
    table = np.asarray(samples)
    label_values = table[:, column]
    if not np.all(label_values == np.round(label_values)):
        raise DataError(f"{path}: column {column} contains non-integer values and cannot be the label", value=column)
    features = np.delete(table, column, axis=1)
    return _checked(path, features, label_values.astype(np.int64), "npy")


def _open_npz(path: Path) -> LabeledFile:
    with np.load(path, allow_pickle=False) as archive:
        keys = set(archive.files)
        sample_key = next((key for key in _NPZ_SAMPLES if key in keys), None)
        label_key = next((key for key in _NPZ_LABELS if key in keys), None)
        if sample_key is None or label_key is None:
            raise DataError(
                f"{path} has arrays {sorted(keys)}; it needs one of {', '.join(_NPZ_SAMPLES)} and one of "
                f"{', '.join(_NPZ_LABELS)}",
                value=str(path),
            )
        samples, label_array = archive[sample_key], archive[label_key]
    return _checked(path, samples, label_array, "npz")


def _open_csv(path: Path, label_column: str) -> LabeledFile:
    with path.open(newline="") as stream:
        reader = csv.reader(stream)
        try:
            header = [name.strip() for name in next(reader)]
        except StopIteration:
            raise DataError(f"{path} is empty; a CSV needs a header row", value=str(path)) from None
        if label_column not in header:
            raise DataError(
                f"{path} has no column {label_column!r}; its columns are {', '.join(header)}; pass --label-column NAME",
                value=label_column,
            )
        label_index = header.index(label_column)
        texts: dict[str, None] = {}
        rows = 0
        for row in reader:
            if not row:
                continue
            if len(row) <= label_index:
                raise DataError(f"{path}, data row {rows + 1}: no value in column {label_column!r}", value=rows + 1)
            texts.setdefault(row[label_index].strip(), None)
            rows += 1
    if all(text.isdigit() for text in texts):
        classes = {text: int(text) for text in texts}
        names = None
    else:
        names = tuple(sorted(texts))
        classes = {text: number for number, text in enumerate(names)}
    features = [index for index in range(len(header)) if index != label_index]
    logger.info("%s: %d rows, %d feature columns, %d classes", path, rows, len(features), len(classes))
    return LabeledFile(
        path, "csv", rows, (len(features),), names,
        _csv_label_column=label_column, _csv_feature_columns=features, _csv_classes=classes,
    )

"""Sharded data sets: every format reads the same samples, partition by partition, and bad folders are rejected."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mlwarden.data.shards import open_sharded
from mlwarden.errors import DataError

SPLITS = ((0, 70), (70, 130))


@pytest.fixture(scope="module")
def samples(fashion_test) -> tuple[np.ndarray, np.ndarray]:
    images = (fashion_test.images[:130, 0].numpy() * 255).round().astype(np.uint8)
    return images, fashion_test.labels[:130].numpy().astype(np.uint8)


def _write_idx(path: Path, array: np.ndarray, gzipped: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if gzipped else open
    with opener(path, "wb") as stream:
        stream.write(header + array.tobytes())


def _write_parquet(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    pa = pytest.importorskip("pyarrow")
    parquet = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"image": pa.array(list(images.reshape(len(images), -1)), type=pa.list_(pa.uint8())), "label": labels})
    table = table.replace_schema_metadata({"mlwarden.shape": "1,28,28"})
    parquet.write_table(table, path, row_group_size=32)


WRITERS: dict[str, Callable[[Path, int, np.ndarray, np.ndarray], None]] = {
    "npy": lambda folder, n, x, y: (np.save(folder / f"s{n}-images.npy", x), np.save(folder / f"s{n}-labels.npy", y)),
    "npz": lambda folder, n, x, y: np.savez(folder / f"s{n}.npz", images=x, labels=y),
    "npz-compressed": lambda folder, n, x, y: np.savez_compressed(folder / f"s{n}.npz", images=x, labels=y),
    "parquet": lambda folder, n, x, y: _write_parquet(folder / f"s{n}.parquet", x, y),
    "idx": lambda folder, n, x, y: (
        _write_idx(folder / f"s{n}-images-idx3-ubyte", x, False),
        _write_idx(folder / f"s{n}-labels-idx1-ubyte", y, False),
    ),
    "idx-gzip": lambda folder, n, x, y: (
        _write_idx(folder / f"s{n}-images-idx3-ubyte.gz", x, True),
        _write_idx(folder / f"s{n}-labels-idx1-ubyte.gz", y, True),
    ),
}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_formats_read_same_samples(kind, samples, tmp_path):
    images, labels = samples
    for number, (start, stop) in enumerate(SPLITS):
        WRITERS[kind](tmp_path, number, images[start:stop], labels[start:stop])
    dataset = open_sharded(tmp_path)
    assert len(dataset) == 130
    assert dataset.sample_shape == (1, 28, 28)

    parts = list(dataset.iter_partitions(32))
    assert [(p.offset, len(p)) for p, _, _ in parts][:4] == [(0, 32), (32, 32), (64, 6), (70, 32)]
    read_images = np.concatenate([x for _, x, _ in parts])
    read_labels = np.concatenate([y for _, _, y in parts])
    assert read_images.dtype == np.float32
    assert np.array_equal(read_images, images[:, None].astype(np.float32) / 255.0)
    assert np.array_equal(read_labels, labels.astype(np.int64))


def test_dask_arrays_match_partitions(samples, tmp_path):
    pytest.importorskip("dask.array")
    images, labels = samples
    for number, (start, stop) in enumerate(SPLITS):
        WRITERS["npy"](tmp_path, number, images[start:stop], labels[start:stop])
    lazy_images, lazy_labels = open_sharded(tmp_path).to_dask(50)
    assert lazy_images.chunks[0] == (50, 20, 50, 10)
    # The synchronous scheduler, whatever Dask client another test left as the default.
    window = lazy_images[60:90].compute(scheduler="synchronous")
    assert np.array_equal(window, images[60:90, None].astype(np.float32) / 255.0)
    assert np.array_equal(lazy_labels.compute(scheduler="synchronous"), labels.astype(np.int64))


def test_missing_labels_file_is_rejected(samples, tmp_path):
    np.save(tmp_path / "s0-images.npy", samples[0][:10])
    with pytest.raises(DataError, match="no labels file"):
        open_sharded(tmp_path)


def test_mixed_formats_are_rejected(samples, tmp_path):
    images, labels = samples
    WRITERS["npy"](tmp_path, 0, images[:10], labels[:10])
    WRITERS["npz"](tmp_path, 1, images[10:20], labels[10:20])
    with pytest.raises(DataError, match="mixes shard formats"):
        open_sharded(tmp_path)


def test_float_images_out_of_range_are_rejected(tmp_path):
    np.save(tmp_path / "s0-images.npy", np.full((4, 28, 28), 255.0, dtype=np.float32))
    np.save(tmp_path / "s0-labels.npy", np.zeros(4, dtype=np.int64))
    dataset = open_sharded(tmp_path)
    with pytest.raises(DataError, match=r"must lie in \[0, 1\]"):
        dataset.read(dataset.partitions(4)[0])


def test_count_mismatch_and_empty_folder_are_rejected(samples, tmp_path):
    with pytest.raises(DataError, match="no shards found"):
        open_sharded(tmp_path)
    np.save(tmp_path / "s0-images.npy", samples[0][:10])
    np.save(tmp_path / "s0-labels.npy", samples[1][:9])
    with pytest.raises(DataError, match="10 images but 9 labels"):
        open_sharded(tmp_path)

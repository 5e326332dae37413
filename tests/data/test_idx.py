import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from mlwarden.data import FASHION_MNIST_CLASSES, load_dataset, load_idx_directory, read_idx
from mlwarden.errors import DataError


def write_idx(path: Path, array: np.ndarray, *, compress: bool = False, type_code: int = 0x08) -> Path:
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(">u1").tobytes()
    if compress:
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def make_directory(tmp_path: Path, images: np.ndarray, labels: np.ndarray, compress: bool = True) -> Path:
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images, compress=compress)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels, compress=compress)
    return tmp_path


def test_real_fashion_mnist_test_split(fashion_test):
    assert fashion_test.images.shape == (10000, 1, 28, 28)
    assert fashion_test.images.dtype.is_floating_point
    assert float(fashion_test.images.min()) == 0.0
    assert float(fashion_test.images.max()) == 1.0
    assert fashion_test.labels.shape == (10000,)
    assert set(fashion_test.labels.tolist()) == set(range(10))
    assert fashion_test.class_names == FASHION_MNIST_CLASSES


def test_plain_and_gzipped_files_read_alike(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    plain = read_idx(write_idx(tmp_path / "plain", array))
    zipped = read_idx(write_idx(tmp_path / "zipped.gz", array, compress=True))
    np.testing.assert_array_equal(plain, array)
    np.testing.assert_array_equal(zipped, array)


def test_directory_loader_scales_images(tmp_path):
    images = np.full((5, 28, 28), 255, dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 4], dtype=np.uint8)
    data = load_idx_directory(make_directory(tmp_path, images, labels, compress=False))
    assert data.images.shape == (5, 1, 28, 28)
    assert float(data.images.max()) == 1.0
    assert data.labels.tolist() == [0, 1, 2, 3, 4]


def test_wrong_magic_number_rejected(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 3) + b"abc")
    with pytest.raises(DataError, match="magic number"):
        read_idx(path)


def test_truncated_file_rejected(tmp_path):
    array = np.zeros((10, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / "images", array)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_truncated_gzip_rejected(tmp_path):
    array = np.random.default_rng(0).integers(0, 255, (50, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / "images.gz", array, compress=True)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(DataError, match="corrupt or truncated"):
        read_idx(path)


def test_trailing_bytes_rejected(tmp_path):
    path = write_idx(tmp_path / "labels", np.zeros(4, dtype=np.uint8))
    path.write_bytes(path.read_bytes() + b"\x00\x00")
    with pytest.raises(DataError, match="after the data"):
        read_idx(path)


def test_swapped_files_rejected(tmp_path):
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    labels = np.zeros(3, dtype=np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", labels)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", images)
    with pytest.raises(DataError, match="dimensions"):
        load_idx_directory(tmp_path)


def test_count_mismatch_rejected(tmp_path):
    directory = make_directory(tmp_path, np.zeros((4, 28, 28), np.uint8), np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="4 images but .* 3 labels"):
        load_idx_directory(directory)


def test_mislabeled_file_rejected(tmp_path):
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    directory = make_directory(tmp_path, np.zeros((3, 28, 28), np.uint8), np.array([0, 1, 7], np.uint8))
    with pytest.raises(DataError, match="label 7"):
        load_idx_directory(directory)


def test_missing_file_names_expected_files(tmp_path):
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_idx_directory(tmp_path)


def test_unknown_dataset_lists_names():
    with pytest.raises(DataError, match="fashion-mnist"):
        load_dataset("cifar-11")


def test_missing_standard_location_names_package(monkeypatch, tmp_path):
    import mlwarden.data.datasets as datasets

    monkeypatch.setitem(datasets.STANDARD_LOCATIONS, "mnist", tmp_path / "absent")
    monkeypatch.delenv("MLWARDEN_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="apt-get install -y dataset-mnist"):
        load_dataset("mnist")

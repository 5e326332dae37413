"""``mlwarden train`` on a small IDX directory cut from the real Fashion-MNIST files."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np

from mlwarden.cli.main import main
from mlwarden.models import resolve_model
from mlwarden.models.weights import file_sha256


def _write(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_train_writes_weights_and_sidecar(tmp_path, fashion_test, capsys):
    data = tmp_path / "fashion-small"
    data.mkdir()
    images = (fashion_test.images[:, 0] * 255).round().numpy().astype(np.uint8)
    labels = fashion_test.labels.numpy().astype(np.uint8)
    _write(data / "train-images-idx3-ubyte.gz", images[:3000])
    _write(data / "train-labels-idx1-ubyte.gz", labels[:3000])
    _write(data / "t10k-images-idx3-ubyte.gz", images[9000:])
    _write(data / "t10k-labels-idx1-ubyte.gz", labels[9000:])
    output = tmp_path / "small.safetensors"

    assert main(["train", "--data", str(data), "--epochs", "2", "--output", str(output)]) == 0

    printed = capsys.readouterr().out
    assert "epoch   1" in printed
    assert "epoch   2" in printed
    sidecar = json.loads(output.with_suffix(".json").read_text())
    assert sidecar["architecture"] == "lenet5"
    assert sidecar["sha256"] == file_sha256(output)
    assert sidecar["clean_test_accuracy"] > 0.6
    assert len(sidecar["training"]["history"]) == 2
    loaded = resolve_model(str(output))
    assert loaded.metadata["clean_test_accuracy"] == sidecar["clean_test_accuracy"]


def test_train_rejects_zero_epochs(capsys):
    assert main(["train", "--epochs", "0"]) == 2
    assert "epochs must be an integer >= 1, got 0" in capsys.readouterr().err

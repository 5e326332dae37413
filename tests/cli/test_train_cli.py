"""``mlwarden train`` on a small IDX directory cut from the real Fashion-MNIST files."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest

from mlwarden.cli.main import main
from mlwarden.models import resolve_model
from mlwarden.models.weights import file_sha256


def _write(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.fixture
def small_data(tmp_path, fashion_test):
    data = tmp_path / "fashion-small"
    data.mkdir()
    images = (fashion_test.images[:, 0] * 255).round().numpy().astype(np.uint8)
    labels = fashion_test.labels.numpy().astype(np.uint8)
    _write(data / "train-images-idx3-ubyte.gz", images[:3000])
    _write(data / "train-labels-idx1-ubyte.gz", labels[:3000])
    _write(data / "t10k-images-idx3-ubyte.gz", images[9000:])
    _write(data / "t10k-labels-idx1-ubyte.gz", labels[9000:])
    return data


def test_train_writes_weights_and_sidecar(tmp_path, small_data, capsys):
    data = small_data
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


def test_train_checks_output_before_training(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    assert main(["train", "--epochs", "1", "--output", str(blocker / "x.safetensors")]) == 2
    captured = capsys.readouterr()
    assert f"because its parent {str(blocker)!r} is a file" in captured.err
    assert "epoch" not in captured.out


def test_train_keeps_weights_when_saving_fails(tmp_path, small_data, monkeypatch, capsys):
    import mlwarden.cli.train as train_cli

    real_save = train_cli.save_weights
    output = tmp_path / "small.safetensors"

    def failing_save(model, path, metadata):
        if path == output:
            raise OSError(28, "No space left on device")
        return real_save(model, path, metadata)

    monkeypatch.setattr(train_cli, "save_weights", failing_save)
    monkeypatch.setattr(train_cli.tempfile, "gettempdir", lambda: str(tmp_path))
    assert main(["train", "--data", str(small_data), "--epochs", "1", "--output", str(output)]) == 2
    error = capsys.readouterr().err
    assert "No space left on device" in error
    rescued = list(tmp_path.glob("mlwarden-train-*.safetensors"))
    assert len(rescued) == 1
    assert str(rescued[0]) in error
    assert resolve_model(str(rescued[0])).metadata["architecture"] == "lenet5"

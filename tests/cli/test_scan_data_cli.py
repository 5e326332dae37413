"""``mlwarden scan-data`` on every input format: suspects.csv ranked, summary written, errors on one line."""

from __future__ import annotations

import csv
import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from mlwarden.attacks.poisoning import RandomLabelFlip
from mlwarden.cli.main import main
from mlwarden.data import Dataset


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three well separated Gaussian classes of 150 rows with 15 flipped labels."""
    generator = np.random.default_rng(0)
    centers = np.array([[0.0] * 6, [6.0] * 6, [-6.0] * 6])
    labels = np.repeat(np.arange(3), 150)
    features = centers[labels] + generator.normal(size=(450, 6))
    poisoned = RandomLabelFlip(rate=15 / 450, seed=0).poison(features, labels)
    return features, poisoned.labels, poisoned.indices


def _suspects(directory: Path) -> list[dict[str, str]]:
    with (directory / "suspects.csv").open(newline="") as stream:
        return list(csv.DictReader(stream))


def _check_outputs(directory: Path, poisoned: np.ndarray, rows: int) -> None:
    suspects = _suspects(directory)
    assert list(suspects[0]) == ["rank", "index", "score", "reason", "label", "suggested_label", "detector"]
    scores = [float(row["score"]) for row in suspects]
    assert scores == sorted(scores, reverse=True)
    assert all(row["reason"] for row in suspects)
    found = {int(row["index"]) for row in suspects}
    assert len(found & set(poisoned.tolist())) >= 0.8 * len(poisoned)
    summary = json.loads((directory / "summary.json").read_text())
    assert summary["schema"] == "mlwarden.scan/1"
    assert summary["rows"] == rows
    assert "| class | rows | flagged | share |" in (directory / "summary.md").read_text()


def test_scan_npz(tmp_path: Path, blobs, capsys) -> None:  # type: ignore[no-untyped-def]
    features, labels, poisoned = blobs
    np.savez(tmp_path / "data.npz", features=features, labels=labels)
    status = main(["scan-data", str(tmp_path / "data.npz"), "--output", str(tmp_path / "out"), "--components", "0"])
    assert status == 0
    _check_outputs(tmp_path / "out", poisoned, 450)
    printed = capsys.readouterr().out
    assert "rows flagged" in printed
    assert "class" in printed.splitlines()[0]


def test_scan_csv_with_text_labels(tmp_path: Path, blobs) -> None:  # type: ignore[no-untyped-def]
    features, labels, poisoned = blobs
    names = np.array(["cat", "dog", "fox"])
    with (tmp_path / "table.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["a", "b", "species", "c", "d", "e", "f"])
        for row, label in zip(features, names[labels]):
            writer.writerow([*row[:2], label, *row[2:]])
    status = main(
        ["scan-data", str(tmp_path / "table.csv"), "--label-column", "species", "--output", str(tmp_path / "out"),
         "--components", "0", "--shard-size", "100"]
    )
    assert status == 0
    _check_outputs(tmp_path / "out", poisoned, 450)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [entry["name"] for entry in summary["classes"]] == ["0 (cat)", "1 (dog)", "2 (fox)"]


def test_scan_npy_with_label_column(tmp_path: Path, blobs) -> None:  # type: ignore[no-untyped-def]
    features, labels, poisoned = blobs
    np.save(tmp_path / "table.npy", np.column_stack([features, labels]))
    status = main(["scan-data", str(tmp_path / "table.npy"), "--label-column", "-1", "--output", str(tmp_path / "out"), "--top", "10"])
    assert status == 0
    assert len(_suspects(tmp_path / "out")) == 10


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


def test_scan_idx_in_model_features(tmp_path: Path, fashion_test: Dataset) -> None:
    images = (fashion_test.images[:600, 0].numpy() * 255).round().astype(np.uint8)
    poisoned = RandomLabelFlip(rate=0.1, seed=4).poison(np.zeros((600, 1)), fashion_test.labels[:600].numpy())
    _write_idx(tmp_path / "fashion-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "fashion-labels-idx1-ubyte.gz", poisoned.labels)
    status = main(
        ["scan-data", str(tmp_path / "fashion-images-idx3-ubyte.gz"), "--model", "lenet5", "--detectors", "label-noise",
         "--output", str(tmp_path / "out"), "--components", "0"]
    )
    assert status == 0
    _check_outputs(tmp_path / "out", poisoned.indices, 600)


def test_scan_errors_exit_2(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "table.csv").write_text("a,b,label\n1,2,0\n")
    assert main(["scan-data", str(tmp_path / "table.csv"), "--label-column", "target"]) == 2
    assert "has no column 'target'" in capsys.readouterr().err
    assert main(["scan-data", str(tmp_path / "missing.npz")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["scan-data", str(tmp_path / "table.csv"), "--detectors", "magic"]) == 2
    assert "unknown detector 'magic'" in capsys.readouterr().err
    np.save(tmp_path / "alone.npy", np.zeros((5, 3)))
    assert main(["scan-data", str(tmp_path / "alone.npy")]) == 2
    assert "--labels" in capsys.readouterr().err


def test_scan_output_below_file_exit_2(tmp_path: Path, blobs, capsys) -> None:  # type: ignore[no-untyped-def]
    features, labels, _ = blobs
    np.savez(tmp_path / "data.npz", features=features, labels=labels)
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    assert main(["scan-data", str(tmp_path / "data.npz"), "--output", str(blocker)]) == 2
    assert f"--output {str(blocker)!r} is a file, not a folder" in capsys.readouterr().err
    assert main(["scan-data", str(tmp_path / "data.npz"), "--output", str(blocker / "scan")]) == 2
    assert f"its parent {str(blocker)!r} is a file, not a folder" in capsys.readouterr().err

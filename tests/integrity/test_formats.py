"""Format checks: safetensors headers, ONNX external data, zip archives, compressed joblib and NumPy files."""

from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mlwarden.integrity import FindingKind, Severity, scan_file

from .corpus import Payload, _onnx_escaping


def write_safetensors(path: Path, header: dict, data: bytes) -> Path:
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    return path


def messages(path: Path) -> list[str]:
    return [finding.message for finding in scan_file(path).findings]


def test_safetensors_valid_file_clean(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "ok.safetensors"
    save_file({"a": torch.zeros(2, 3), "b": torch.ones(5, dtype=torch.int8)}, path)
    result = scan_file(path)
    assert result.format == "safetensors"
    assert result.findings == []


@pytest.mark.parametrize(
    ("header", "data", "expected"),
    [
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "run past"),
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}, b"\0" * 12, "needs 16 bytes"),
        ({"w": {"dtype": "F99", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16, "unknown dtype"),
        ({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, b"\0" * 16, "non-negative"),
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}}, b"\0" * 16, "end before"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 64, "after the last tensor"),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]},
            },
            b"\0" * 24,
            "belong to no tensor",
        ),
        ({"__metadata__": {"n": 1}, "w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}, b"\0", "strings to strings"),
    ],
    ids=["past-end", "size-mismatch", "bad-dtype", "bad-shape", "reversed", "trailing-bytes", "hole", "metadata"],
)
def test_safetensors_bad_header(tmp_path: Path, header: dict, data: bytes, expected: str) -> None:
    path = write_safetensors(tmp_path / "bad.safetensors", header, data)
    result = scan_file(path)
    assert result.flagged
    assert all(finding.kind is FindingKind.BAD_HEADER for finding in result.findings)
    assert any(expected in message for message in messages(path))


def test_safetensors_header_length_past_end(tmp_path: Path) -> None:
    path = tmp_path / "long.safetensors"
    path.write_bytes(struct.pack("<Q", 10**6) + b'{"a": 1}')
    result = scan_file(path)
    assert result.flagged


def test_safetensors_duplicate_keys(tmp_path: Path) -> None:
    entry = '{"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}'
    header = f'{{"w": {entry}, "w": {entry}}}'.encode()
    path = tmp_path / "dup.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0")
    assert any("duplicate keys" in message for message in messages(path))


def test_onnx_external_data_checks(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    (tmp_path / "short.bin").write_bytes(b"\0" * 8)
    cases = {
        "inside.onnx": ("weights.bin", None),
        "parent.onnx": ("../secret", "'..'"),
        "absolute.onnx": ("/etc/passwd", "absolute path"),
        "short.onnx": ("short.bin", "outside the file"),
        "missing.onnx": ("nowhere.bin", "missing"),
    }
    for name, (location, expected) in cases.items():
        path = _onnx_escaping(tmp_path, location, name)
        result = scan_file(path)
        assert result.format == "onnx"
        if expected is None:
            assert result.findings == [], name
        else:
            assert any(expected in finding.message for finding in result.findings), name
    assert not scan_file(tmp_path / "missing.onnx").flagged  # a missing side file is a warning only


def test_onnx_symlink_escape(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data.bin").write_bytes(b"\0" * 16)
    model = tmp_path / "model"
    model.mkdir()
    os.symlink(outside / "data.bin", model / "data.bin")
    result = scan_file(_onnx_escaping(model, "data.bin", "linked.onnx"))
    assert result.flagged
    assert "symbolic link" in result.findings[0].message


def test_onnx_garbage_malformed(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\xff" * 64)
    result = scan_file(path)
    assert result.flagged


def test_zip_duplicate_members_flagged(tmp_path: Path) -> None:
    path = tmp_path / "dup.pt"
    with zipfile.ZipFile(path, "w") as archive, pytest.warns(UserWarning, match="Duplicate name"):
        archive.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
        archive.writestr("archive/data.pkl", pickle.dumps(Payload(os.system, "true"), protocol=2))
    result = scan_file(path)
    kinds = {finding.kind for finding in result.findings}
    assert FindingKind.DUPLICATE_MEMBER in kinds
    assert "posix.system" in result.unlisted_globals()


def test_torchscript_archive_warned(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    result = scan_file(path)
    assert result.format == "torchscript"
    assert FindingKind.TORCHSCRIPT in {finding.kind for finding in result.findings}
    assert max(finding.severity for finding in result.findings) is Severity.WARNING


def test_npz_members_scanned(tmp_path: Path) -> None:
    path = tmp_path / "arrays.npz"
    np.savez(path, weights=np.ones(3), hook=np.array([Payload(os.system, "true")], dtype=object))
    assert "posix.system" in scan_file(path).unlisted_globals()


def test_lz4_joblib_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "model.joblib"
    path.write_bytes(b"\x04\x22\x4d\x18" + b"\0" * 32)
    result = scan_file(path)
    assert [finding.kind for finding in result.findings] == [FindingKind.UNSUPPORTED]


def test_truncated_compressed_joblib_flagged(tmp_path: Path) -> None:
    import joblib

    full = tmp_path / "full.joblib"
    joblib.dump({"w": np.arange(1000.0)}, full, compress=("gzip", 3))
    cut = tmp_path / "cut.joblib"
    cut.write_bytes(full.read_bytes()[:40])
    assert not scan_file(full).flagged
    assert scan_file(cut).flagged


def test_old_torch_tar_unsupported(tmp_path: Path) -> None:
    import tarfile

    path = tmp_path / "old.pt"
    member = tmp_path / "pickle"
    member.write_bytes(pickle.dumps({}))
    with tarfile.open(path, "w") as archive:
        archive.add(member, arcname="pickle")
    result = scan_file(path)
    assert result.format == "torch-tar"
    assert result.flagged


def test_missing_file_raises(tmp_path: Path) -> None:
    from mlwarden.errors import ParameterError

    with pytest.raises(ParameterError, match="not a file"):
        scan_file(tmp_path / "absent.pt")

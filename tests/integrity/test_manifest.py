"""Signed manifests: one-byte changes, added and removed files, wrong keys and tampered manifests."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from mlwarden.errors import IntegrityError, ParameterError
from mlwarden.integrity import (
    FileStatus,
    Manifest,
    build_manifest,
    generate_keypair,
    load_private_key,
    load_public_key,
    verify_manifest,
    write_keypair,
    write_manifest,
)

CHUNK = 4096


@pytest.fixture()
def signed(tmp_path: Path) -> tuple[Path, Path, object]:
    """A folder of three files, signed; returns (base folder, manifest path, public key)."""
    data = tmp_path / "data"
    (data / "nested").mkdir(parents=True)
    (data / "train.bin").write_bytes(os.urandom(3 * CHUNK + 17))
    (data / "labels.txt").write_bytes(b"0\n1\n2\n")
    (data / "nested" / "empty").write_bytes(b"")
    model = tmp_path / "model.safetensors"
    model.write_bytes(os.urandom(CHUNK))
    private_key, public_key = generate_keypair()
    manifest = build_manifest([data, model], base_dir=tmp_path, chunk_size=CHUNK, progress=False)
    path = write_manifest(manifest, private_key, tmp_path / "manifest.json")
    return tmp_path, path, public_key


def statuses(report) -> dict[str, FileStatus]:  # type: ignore[no-untyped-def]
    return {check.path: check.status for check in report.files}


def test_untouched_files_intact(signed) -> None:  # type: ignore[no-untyped-def]
    base, manifest, public_key = signed
    report = verify_manifest(manifest, public_key, progress=False)
    assert report.signature_valid
    assert report.intact
    assert set(statuses(report)) == {"data/train.bin", "data/labels.txt", "data/nested/empty", "model.safetensors"}


def test_one_byte_change_names_file(signed) -> None:  # type: ignore[no-untyped-def]
    base, manifest, public_key = signed
    for relative in ("data/train.bin", "data/labels.txt", "model.safetensors"):
        path = base / relative
        original = path.read_bytes()
        offset = len(original) // 2
        path.write_bytes(original[:offset] + bytes([original[offset] ^ 1]) + original[offset + 1 :])
        report = verify_manifest(manifest, public_key, progress=False)
        assert not report.intact
        assert [(check.path, check.status) for check in report.problems()] == [(relative, FileStatus.CHANGED)]
        path.write_bytes(original)
    assert verify_manifest(manifest, public_key, progress=False).intact


def test_changed_chunk_located(signed) -> None:  # type: ignore[no-untyped-def]
    base, manifest, public_key = signed
    path = base / "data" / "train.bin"
    data = bytearray(path.read_bytes())
    data[2 * CHUNK + 5] ^= 0xFF
    path.write_bytes(bytes(data))
    (problem,) = verify_manifest(manifest, public_key, progress=False).problems()
    assert f"chunks of {CHUNK} bytes" in problem.detail
    assert f"the first changed chunk starts at byte {2 * CHUNK}" in problem.detail
    assert "first at byte" not in problem.detail


def test_added_removed_and_resized(signed) -> None:  # type: ignore[no-untyped-def]
    base, manifest, public_key = signed
    (base / "data" / "labels.txt").unlink()
    (base / "data" / "nested" / "extra.bin").write_bytes(b"new")
    (base / "model.safetensors").write_bytes(b"short")
    found = {check.path: check.status for check in verify_manifest(manifest, public_key, progress=False).problems()}
    assert found == {
        "data/labels.txt": FileStatus.REMOVED,
        "data/nested/extra.bin": FileStatus.ADDED,
        "model.safetensors": FileStatus.CHANGED,
    }


def test_wrong_key_fails(signed) -> None:  # type: ignore[no-untyped-def]
    _, manifest, _ = signed
    _, other_key = generate_keypair()
    report = verify_manifest(manifest, other_key, progress=False)
    assert not report.signature_valid
    assert not report.intact
    assert "signed by key" in report.signature_detail
    assert report.files == []


def test_forged_key_id_fails(signed) -> None:  # type: ignore[no-untyped-def]
    _, manifest, _ = signed
    other_private, other_public = generate_keypair()
    from mlwarden.integrity import key_id

    document = json.loads(manifest.read_text())
    document["signature"]["key_id"] = key_id(other_public)
    manifest.write_text(json.dumps(document))
    report = verify_manifest(manifest, other_public, progress=False)
    assert not report.signature_valid
    assert "does not match" in report.signature_detail


def test_edited_manifest_fails(signed) -> None:  # type: ignore[no-untyped-def]
    base, manifest, public_key = signed
    document = json.loads(manifest.read_text())
    # An attacker who changed a file and updated its hash in the manifest.
    document["manifest"]["files"][0]["size"] += 1
    manifest.write_text(json.dumps(document))
    report = verify_manifest(manifest, public_key, progress=False)
    assert not report.signature_valid


@pytest.mark.parametrize(
    "content",
    ['{"signature": {"algorithm": "rsa"}}', '{"manifest": {}}', '{"manifest": {"schema": "mlwarden.manifest/1"'],
)
def test_damaged_manifest_fails(tmp_path: Path, content: str) -> None:
    _, public_key = generate_keypair()
    path = tmp_path / "manifest.json"
    path.write_text(content)
    assert not verify_manifest(path, public_key, progress=False).signature_valid


@pytest.mark.parametrize("content", ["not json", "[]", "{not json", '{"learning_rate": 0.1}', "\x00\x01binary"])
def test_non_manifest_raises(tmp_path: Path, content: str) -> None:
    _, public_key = generate_keypair()
    path = tmp_path / "manifest.json"
    path.write_text(content)
    with pytest.raises(ParameterError, match="is not a manifest because"):
        verify_manifest(path, public_key, progress=False)


def test_manifest_paths_must_stay_inside() -> None:
    entry = {"path": "../etc/passwd", "size": 1, "sha256": "0" * 64, "merkle_root": "0" * 64, "chunk_hashes": []}
    data = {"schema": "mlwarden.manifest/1", "chunk_size": CHUNK, "directories": [], "files": [entry]}
    with pytest.raises(IntegrityError, match="leaves the base folder"):
        Manifest.from_dict(data)


def test_paths_outside_base_rejected(tmp_path: Path) -> None:
    inside = tmp_path / "inside"
    inside.mkdir()
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"x")
    with pytest.raises(ParameterError, match="outside the base folder"):
        build_manifest([outside], base_dir=inside, progress=False)


def test_symlink_escape_detected(signed) -> None:  # type: ignore[no-untyped-def]
    base, manifest, public_key = signed
    elsewhere = base.parent / f"{base.name}-elsewhere.bin"
    elsewhere.write_bytes((base / "data" / "labels.txt").read_bytes())
    (base / "data" / "labels.txt").unlink()
    os.symlink(elsewhere, base / "data" / "labels.txt")
    problems = verify_manifest(manifest, public_key, progress=False).problems()
    assert [(check.path, check.status) for check in problems] == [("data/labels.txt", FileStatus.CHANGED)]


def test_manifest_excluded_from_its_folder(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"a")
    private_key, public_key = generate_keypair()
    output = tmp_path / "manifest.json"
    output.write_text("{}")
    manifest = build_manifest([tmp_path], base_dir=tmp_path, exclude=[output], progress=False)
    assert [entry.path for entry in manifest.files] == ["a.bin"]
    write_manifest(manifest, private_key, output)
    assert verify_manifest(output, public_key, progress=False).intact


def test_keypair_files(tmp_path: Path) -> None:
    private, public = tmp_path / "k.key", tmp_path / "k.pub"
    identifier = write_keypair(private, public, passphrase=b"correct horse")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert len(identifier) == 16
    with pytest.raises(ParameterError, match="encrypted"):
        load_private_key(private)
    with pytest.raises(ParameterError, match="passphrase is wrong"):
        load_private_key(private, b"wrong")
    key = load_private_key(private, b"correct horse")
    assert load_public_key(public).public_bytes_raw() == key.public_key().public_bytes_raw()
    with pytest.raises(ParameterError, match="already exists"):
        write_keypair(private, public)
    with pytest.raises(ParameterError, match="is a private key"):
        load_public_key(private)

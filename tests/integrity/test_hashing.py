"""Streamed hashing: whole-file SHA-256, chunk hashes and the RFC 6962 Merkle root."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mlwarden.errors import ParameterError
from mlwarden.integrity import hash_file, merkle_root

CHUNK = 4096


def leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def test_whole_file_sha256(tmp_path: Path) -> None:
    data = bytes(range(256)) * 100
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    digest = hash_file(path, CHUNK)
    assert digest.sha256 == hashlib.sha256(data).hexdigest()
    assert digest.size == len(data)
    assert len(digest.chunk_hashes) == -(-len(data) // CHUNK)


def test_merkle_root_three_chunks(tmp_path: Path) -> None:
    chunks = [b"a" * CHUNK, b"b" * CHUNK, b"c" * 10]
    path = tmp_path / "f.bin"
    path.write_bytes(b"".join(chunks))
    digest = hash_file(path, CHUNK)
    # RFC 6962: the split falls at the largest power of two below the leaf count.
    expected = node(node(leaf(chunks[0]), leaf(chunks[1])), leaf(chunks[2]))
    assert digest.merkle_root == expected.hex()
    assert digest.chunk_hashes == tuple(leaf(chunk).hex() for chunk in chunks)


def test_merkle_root_single_and_empty(tmp_path: Path) -> None:
    assert merkle_root([leaf(b"x")]) == leaf(b"x")
    assert merkle_root([]) == hashlib.sha256(b"").digest()
    path = tmp_path / "empty"
    path.write_bytes(b"")
    digest = hash_file(path, CHUNK)
    assert digest.size == 0
    assert digest.chunk_hashes == ()
    assert digest.sha256 == hashlib.sha256(b"").hexdigest()


def test_leaf_not_confused_with_node() -> None:
    # Domain separation: two leaves' root differs from one leaf holding their concatenated hashes.
    a, b = leaf(b"a"), leaf(b"b")
    assert merkle_root([a, b]) != leaf(a + b)


def test_progress_called_per_chunk(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"z" * (CHUNK * 2 + 1))
    seen: list[int] = []
    hash_file(path, CHUNK, progress=seen.append)
    assert seen == [CHUNK, CHUNK, 1]


def test_chunk_size_validated(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"1")
    with pytest.raises(ParameterError, match="chunk_size"):
        hash_file(path, 100)

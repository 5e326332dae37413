"""Streamed SHA-256 of files, with a Merkle tree over fixed-size chunks.

Each file is read once in chunks of ``chunk_size`` bytes, so memory stays at
about two chunks whatever the file's size. The pass yields the plain SHA-256
of the whole file (comparable with ``sha256sum``), the SHA-256 of every chunk
and the Merkle root over those chunk hashes. The chunk hashes let a verifier
say which byte ranges changed; the root commits to all of them.

The tree follows RFC 6962 (Laurie, Langley, Kasper, 2013, "Certificate
Transparency", section 2.1): a leaf is ``SHA-256(0x00 || chunk)``, an inner
node ``SHA-256(0x01 || left || right)``, the split falls at the largest power
of two below the leaf count, and an empty file's root is ``SHA-256("")``. The
prefixes keep a leaf from being passed off as an inner node.

The whole-file hash and the chunk hashes are computed in two threads, since
:mod:`hashlib` releases the GIL while hashing large buffers; on two or more
cores a pass takes about as long as one SHA-256 of the file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .._validation import check_int

__all__ = ["FileDigest", "hash_file", "merkle_root", "DEFAULT_CHUNK_SIZE"]

DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
"""Bytes per chunk (4 MiB): 256 chunk hashes per GiB, about 17 KB of manifest."""


@dataclass(frozen=True)
class FileDigest:
    """The hashes of one file.

    Attributes
    ----------
    size : int
        Bytes in the file.
    sha256 : str
        Hex SHA-256 of the whole file, as ``sha256sum`` prints it.
    chunk_size : int
        Bytes per chunk; the last chunk may be shorter.
    chunk_hashes : tuple of str
        Hex leaf hash ``SHA-256(0x00 || chunk)`` of each chunk, in order.
    merkle_root : str
        Hex root of the Merkle tree over ``chunk_hashes``.
    """

    size: int
    sha256: str
    chunk_size: int
    chunk_hashes: tuple[str, ...]
    merkle_root: str


def hash_file(
    path: str | os.PathLike[str],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    progress: Callable[[int], None] | None = None,
) -> FileDigest:
    """Hash the file at ``path`` in one streamed pass.

    Parameters
    ----------
    path : path-like
        A regular file.
    chunk_size : int, default 4 MiB
        Bytes per chunk, at least 4096.
    progress : callable, optional
        Called with the number of bytes read after each chunk (for a progress bar).

    Returns
    -------
    FileDigest
    """
    chunk_size = check_int(chunk_size, "chunk_size", "hash_file", low=4096)
    whole = hashlib.sha256()
    leaves: list[bytes] = []
    size = 0
    with Path(path).open("rb", buffering=0) as stream, ThreadPoolExecutor(max_workers=1) as pool:
        while True:
            chunk = _read_full(stream, chunk_size)
            if not chunk:
                break
            leaf = pool.submit(_leaf_hash, chunk)
            whole.update(chunk)
            leaves.append(leaf.result())
            size += len(chunk)
            if progress is not None:
                progress(len(chunk))
    return FileDigest(
        size=size,
        sha256=whole.hexdigest(),
        chunk_size=chunk_size,
        chunk_hashes=tuple(leaf.hex() for leaf in leaves),
        merkle_root=merkle_root(leaves).hex(),
    )


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """Return the RFC 6962 Merkle root of already hashed ``leaves`` (SHA-256 of nothing when empty)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    level = list(leaves)
    return _subtree(level, 0, len(level))


def _subtree(leaves: list[bytes], start: int, end: int) -> bytes:
    count = end - start
    if count == 1:
        return leaves[start]
    split = 1 << ((count - 1).bit_length() - 1)
    left = _subtree(leaves, start, start + split)
    right = _subtree(leaves, start + split, end)
    return hashlib.sha256(b"\x01" + left + right).digest()


def _leaf_hash(chunk: bytes) -> bytes:
    digest = hashlib.sha256(b"\x00")
    digest.update(chunk)
    return digest.digest()


def _read_full(stream: object, size: int) -> bytes:
    """Read exactly ``size`` bytes unless the file ends first (raw reads may return less)."""
    parts = []
    remaining = size
    while remaining:
        part = stream.read(remaining)  # type: ignore[attr-defined]
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts) if len(parts) != 1 else parts[0]

"""Byte streams for the scanners: bounded reads, position tracking and streaming decompression.

A pickle opcode states how many bytes its argument has, and ``BINBYTES8`` may
claim 2**62 of them. :class:`BoundedReader` reads such arguments in blocks, so
memory grows with the bytes actually present and a lying length ends in a
short read instead of a huge allocation.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zlib
from typing import IO, BinaryIO

__all__ = ["BoundedReader", "ZlibReader", "open_decompressed", "COMPRESSION_PREFIXES"]

_BLOCK = 16 * 1024 * 1024

# Leading bytes of the compressed streams that joblib writes (joblib.compressor).
COMPRESSION_PREFIXES: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bz2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x5d\x00\x00", "lzma"),
    (b"\x04\x22\x4d\x18", "lz4"),
    (b"\x78\x01", "zlib"),
    (b"\x78\x5e", "zlib"),
    (b"\x78\x9c", "zlib"),
    (b"\x78\xda", "zlib"),
)


class BoundedReader:
    """A read-only stream that counts the bytes it hands out and never allocates more than it reads.

    It offers what :func:`pickletools.genops` and the scanners need: ``read``,
    ``readline``, ``tell`` and :meth:`at_eof`. ``tell`` counts bytes from the
    start of the wrapped stream as given, so it also works on non-seekable
    decompressed streams.
    """

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._position = 0
        self._pending = b""

    def tell(self) -> int:
        """Return the number of bytes consumed so far."""
        return self._position

    def at_eof(self) -> bool:
        """Return whether no byte is left, reading at most one byte ahead."""
        if not self._pending:
            self._pending = self._raw.read(1)
        return not self._pending

    def read(self, size: int = -1) -> bytes:
        """Read up to ``size`` bytes (all remaining bytes when ``size`` is negative)."""
        head, self._pending = self._pending, b""
        if size is not None and 0 <= size <= len(head):
            self._pending = head[size:]
            head = head[:size]
            self._position += len(head)
            return head
        wanted = None if size is None or size < 0 else size - len(head)
        parts = [head]
        while wanted is None or wanted > 0:
            block = self._raw.read(_BLOCK if wanted is None else min(wanted, _BLOCK))
            if not block:
                break
            parts.append(block)
            if wanted is not None:
                wanted -= len(block)
        data = b"".join(parts)
        self._position += len(data)
        return data

    def readline(self, size: int = -1) -> bytes:
        """Read up to and including the next newline."""
        head, self._pending = self._pending, b""
        if head == b"\n":
            line = head
        else:
            line = head + self._raw.readline()
        self._position += len(line)
        return line

    def skip(self, count: int) -> int:
        """Discard up to ``count`` bytes in blocks and return how many were discarded."""
        skipped = 0
        while skipped < count:
            block = self.read(min(_BLOCK, count - skipped))
            if not block:
                break
            skipped += len(block)
        return skipped


class ZlibReader(io.RawIOBase):
    """A raw stream that inflates a zlib stream (joblib's ``compress=("zlib", n)`` and default) on demand."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self._raw = raw
        self._inflater = zlib.decompressobj()
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buffer:
            if self._inflater.unconsumed_tail:
                compressed = self._inflater.unconsumed_tail
            elif self._inflater.eof:
                return 0
            else:
                compressed = self._raw.read(1024 * 1024)
                if not compressed:
                    return 0
            # max_length bounds the output, so a small input cannot inflate to gigabytes at once.
            self._buffer = self._inflater.decompress(compressed, max(len(target), 64 * 1024))
        count = min(len(target), len(self._buffer))
        target[:count] = self._buffer[:count]
        self._buffer = self._buffer[count:]
        return count


def open_decompressed(raw: BinaryIO, compression: str) -> BinaryIO:
    """Return a buffered stream that decompresses ``raw`` as it is read.

    Raises
    ------
    ValueError
        If ``compression`` is not one of gzip, bz2, xz, lzma or zlib.
    """
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if compression == "bz2":
        return bz2.BZ2File(raw, mode="rb")  # type: ignore[return-value]
    if compression in ("xz", "lzma"):
        return lzma.LZMAFile(raw, mode="rb")  # type: ignore[return-value]
    if compression == "zlib":
        return io.BufferedReader(ZlibReader(raw), buffer_size=1024 * 1024)  # type: ignore[return-value]
    raise ValueError(f"no streaming decompressor for {compression!r}")

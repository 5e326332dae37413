"""Reader for IDX files, the format of MNIST and Fashion-MNIST.

An IDX file starts with a four-byte magic number: two zero bytes, a type code
and the number of dimensions; then one big-endian 32-bit size per dimension,
then the values in row-major order. Files may be gzip-compressed.

Reference: Y. LeCun, C. Cortes, C. J. C. Burges, "The MNIST database of
handwritten digits" (file format section), 1998.

Every check raises :class:`~mlwarden.errors.DataError` naming the file: a
wrong magic number, a truncated body, trailing bytes, or a size that does not
match the expected shape.
"""

from __future__ import annotations

import gzip
import logging
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

__all__ = ["read_idx", "IDX_TYPES"]

logger = logging.getLogger(__name__)

# Type code of the magic number -> big-endian NumPy dtype of the values.
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
            handle.seek(0)
            if head == _GZIP_MAGIC:
                with gzip.GzipFile(fileobj=handle) as unzipped:
                    return unzipped.read()
            return handle.read()
    except FileNotFoundError:
        raise DataError(f"IDX file not found: {path}", value=str(path)) from None
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(
            f"cannot read IDX file {path}: {error}; the file is corrupt or truncated, download or copy it again",
            value=str(path),
        ) from None


def read_idx(path: str | Path, *, expected_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a NumPy array in native byte order.

    Parameters
    ----------
    path : str or Path
        The file, for example ``t10k-images-idx3-ubyte.gz``.
    expected_ndim : int, optional
        Number of dimensions the caller requires (3 for images, 1 for labels).

    Returns
    -------
    numpy.ndarray
        The values, with the shape stored in the header.

    Raises
    ------
    DataError
        The file is missing, is not IDX, is truncated, has trailing bytes, or
        has another number of dimensions than ``expected_ndim``.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path} is not an IDX file: it has only {len(raw)} bytes", value=str(path))
    zero0, zero1, type_code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0 or type_code not in IDX_TYPES or ndim == 0:
        raise DataError(
            f"{path} is not an IDX file: its magic number is 0x{raw[:4].hex()}, expected 0x0000TTDD with a type "
            f"code TT in {sorted(hex(t) for t in IDX_TYPES)} and DD dimensions",
            value=str(path),
        )
    if expected_ndim is not None and ndim != expected_ndim:
        raise DataError(
            f"{path} has {ndim} dimensions, expected {expected_ndim}; images and labels may be swapped",
            value=str(path),
        )
    header_end = 4 + 4 * ndim
    if len(raw) < header_end:
        raise DataError(f"{path} is truncated inside its header", value=str(path))
    shape = struct.unpack(f">{ndim}I", raw[4:header_end])
    dtype = IDX_TYPES[type_code]
    expected_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    body = len(raw) - header_end
    if body < expected_bytes:
        raise DataError(
            f"{path} is truncated: its header promises shape {shape} ({expected_bytes} bytes of data), "
            f"but only {body} bytes follow; download or copy the file again",
            value=str(path),
        )
    if body > expected_bytes:
        raise DataError(
            f"{path} has {body - expected_bytes} bytes after the data promised by its header (shape {shape}); "
            "the file is corrupt or not an IDX file",
            value=str(path),
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header_end).reshape(shape)
    logger.debug("read %s: shape %s, dtype %s", path, shape, dtype)
    return array.astype(dtype.newbyteorder("="))

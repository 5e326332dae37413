"""Sharded data sets too large for memory: folders of ``.npy``, ``.npz``, Parquet or IDX shards.

A sharded data set is a folder of shard files of one format, taken in name
order (zero-pad the numbers: ``part-0009`` sorts before ``part-0010``).
Samples are numbered globally across shards in that order. Each format
stores images and labels:

- ``.npy``: pairs ``<name>images<rest>.npy`` and ``<name>labels<rest>.npy``;
- ``.npz``: one archive per shard with arrays ``images`` and ``labels``;
- Parquet (``.parquet``): columns ``image`` (a list or fixed-size list of
  numbers, or raw bytes) and ``label``; the image shape is the file's
  key-value metadata ``mlwarden.shape`` (such as ``1,28,28``), else a
  square one-channel image is assumed;
- IDX: pairs ``<name>images-idx3-ubyte`` and ``<name>labels-idx1-ubyte``,
  gzipped or not, as MNIST ships them.

Images are (N, H, W) or (N, C, H, W); ``uint8`` is scaled to ``[0, 1]`` and
floating-point values must already lie there. :meth:`ShardedDataset.read`
reads only the rows of one partition: ``.npy`` and plain IDX through a
memory map, ``.npz`` and gzipped IDX by seeking in the stream, Parquet one
row group at a time. Memory therefore grows with the partition size, not
with the data set. :meth:`ShardedDataset.to_dask` gives the same partitions
as lazy Dask arrays.

Limitations: seeking backwards in a compressed stream (``.npz`` members
written with compression, gzipped IDX) decompresses from the start, so read
the partitions of such a shard in order; Parquet row groups larger than a
partition are read whole.
"""

from __future__ import annotations

import gzip
import io
import logging
import re
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..errors import DataError
from .idx import IDX_TYPES

__all__ = ["ShardFile", "Partition", "ShardedDataset", "open_sharded", "SHARD_FORMATS"]

logger = logging.getLogger(__name__)

SHARD_FORMATS = ("npy", "npz", "parquet", "idx")

_IDX_IMAGES = re.compile(r"images-idx3-ubyte(\.gz)?$")
_SHAPE_KEY = b"mlwarden.shape"


@dataclass(frozen=True)
class ShardFile:
    """One shard: where its images and labels are, and which global indices it holds.

    Attributes
    ----------
    format : str
        One of :data:`SHARD_FORMATS`.
    path : Path
        The images file (``.npy``, IDX) or the whole shard (``.npz``, Parquet).
    labels_path : Path or None
        The labels file of ``.npy`` and IDX shards.
    count : int
        Samples in the shard.
    offset : int
        Global index of the shard's first sample.
    """

    format: str
    path: Path
    labels_path: Path | None
    count: int
    offset: int


@dataclass(frozen=True)
class Partition:
    """Rows ``start:stop`` of one shard: the unit of reading and of scanning.

    Attributes
    ----------
    shard : int
        Position of the shard in :attr:`ShardedDataset.shards`.
    start, stop : int
        Rows within the shard.
    offset : int
        Global index of row ``start``.
    """

    shard: int
    start: int
    stop: int
    offset: int

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def id(self) -> str:
        """Readable name: the global index range."""
        return f"part.{self.offset:011d}-{self.offset + len(self):011d}"


class ShardedDataset:
    """A folder of shards, read partition by partition.

    Parameters
    ----------
    path : str or Path
        The folder of shards, or one ``.npz`` or Parquet file.

    Raises
    ------
    DataError
        The folder is missing or empty, mixes formats, has an images file
        without its labels file, or a shard is unreadable or inconsistent.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        files, self.format = _discover(self.path)
        shards: list[ShardFile] = []
        shapes: set[tuple[int, ...]] = set()
        offset = 0
        for images_path, labels_path in files:
            count, shape = _inspect(self.format, images_path, labels_path)
            shards.append(ShardFile(self.format, images_path, labels_path, count, offset))
            shapes.add(shape)
            offset += count
        if len(shapes) > 1:
            raise DataError(
                f"the shards of {self.path} hold images of different shapes {sorted(shapes)}; every shard must use one",
                value=str(self.path),
            )
        self.shards = tuple(shards)
        self.sample_shape: tuple[int, ...] = shapes.pop() if shapes else ()
        logger.info("opened %d %s shards in %s: %d samples of %s", len(shards), self.format, self.path, offset, self.sample_shape)

    def __len__(self) -> int:
        return sum(shard.count for shard in self.shards)

    @property
    def sample_bytes(self) -> int:
        """Bytes of one sample once read as float32."""
        return 4 * int(np.prod(self.sample_shape, dtype=np.int64))

    def partitions(self, max_samples: int) -> list[Partition]:
        """Return partitions of at most ``max_samples`` rows, none crossing a shard boundary."""
        if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
            raise DataError(f"partition size must be a positive integer, got {max_samples!r}", value=max_samples)
        parts = []
        for position, shard in enumerate(self.shards):
            for start in range(0, shard.count, max_samples):
                stop = min(start + max_samples, shard.count)
                parts.append(Partition(position, start, stop, shard.offset + start))
        return parts

    def read(self, partition: Partition) -> tuple[np.ndarray, np.ndarray]:
        """Return the partition's images (float32, (n, C, H, W), in ``[0, 1]``) and labels (int64, (n,)).

        Raises
        ------
        DataError
            The rows cannot be read, or the values are out of range.
        """
        shard = self.shards[partition.shard]
        reader = _READERS[shard.format]
        try:
            images, labels = reader(shard, partition.start, partition.stop)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as error:
            raise DataError(f"cannot read rows {partition.start}:{partition.stop} of {shard.path}: {error}", value=str(shard.path)) from None
        return _to_float_images(images, self.sample_shape, shard.path), _to_labels(labels, shard.path)

    def iter_partitions(self, max_samples: int) -> Iterator[tuple[Partition, np.ndarray, np.ndarray]]:
        """Yield ``(partition, images, labels)`` in order, holding one partition in memory at a time."""
        for partition in self.partitions(max_samples):
            images, labels = self.read(partition)
            yield partition, images, labels

    def to_dask(self, max_samples: int) -> tuple[Any, Any]:
        """Return lazy Dask arrays of the images and labels, one chunk per partition.

        Nothing is read until a chunk is computed, and each chunk reads only
        its own rows. Needs the ``dask`` extra.
        """
        import dask
        import dask.array as da

        image_chunks, label_chunks = [], []
        for partition in self.partitions(max_samples):
            pair = dask.delayed(self.read, pure=True)(partition, dask_key_name=f"read-{partition.id}")
            image_chunks.append(da.from_delayed(pair[0], (len(partition), *self.sample_shape), dtype=np.float32))
            label_chunks.append(da.from_delayed(pair[1], (len(partition),), dtype=np.int64))
        return da.concatenate(image_chunks), da.concatenate(label_chunks)


def open_sharded(path: str | Path) -> ShardedDataset:
    """Open a folder of shards (see the module docstring)."""
    return ShardedDataset(path)


# --- discovery ------------------------------------------------------------------------


def _discover(path: Path) -> tuple[list[tuple[Path, Path | None]], str]:
    """Return the shard files in name order and their format."""
    if path.is_file() and path.suffix in (".npz", ".parquet"):
        return [(path, None)], path.suffix[1:]
    if not path.is_dir():
        raise DataError(f"sharded data set not found: {path}; pass a folder of .npy, .npz, Parquet or IDX shards", value=str(path))
    names = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    found: dict[str, list[tuple[Path, Path | None]]] = {fmt: [] for fmt in SHARD_FORMATS}
    for file in names:
        if file.suffix == ".npz":
            found["npz"].append((file, None))
        elif file.suffix == ".parquet":
            found["parquet"].append((file, None))
        elif file.suffix == ".npy" and "images" in file.name:
            found["npy"].append((file, _partner(file, file.name.replace("images", "labels"))))
        elif _IDX_IMAGES.search(file.name):
            found["idx"].append((file, _partner(file, file.name.replace("images-idx3", "labels-idx1"))))
    formats = [fmt for fmt, files in found.items() if files]
    if not formats:
        raise DataError(
            f"no shards found in {path}: expected *images*.npy with *labels*.npy, *.npz, *.parquet, or "
            "*images-idx3-ubyte[.gz] with *labels-idx1-ubyte[.gz]",
            value=str(path),
        )
    if len(formats) > 1:
        raise DataError(f"{path} mixes shard formats {', '.join(formats)}; keep one format per folder", value=str(path))
    return found[formats[0]], formats[0]


def _partner(images: Path, name: str) -> Path:
    labels = images.with_name(name)
    if not labels.is_file():
        raise DataError(f"shard {images} has no labels file {labels.name} beside it", value=str(images))
    return labels


def _inspect(fmt: str, path: Path, labels_path: Path | None) -> tuple[int, tuple[int, ...]]:
    """Return the shard's sample count and the shape of one sample (C, H, W)."""
    try:
        if fmt == "npy":
            assert labels_path is not None  # _discover pairs every .npy images file
            images = np.load(path, mmap_mode="r", allow_pickle=False)
            labels = np.load(labels_path, mmap_mode="r", allow_pickle=False)
            count, shape, label_count = images.shape[0], images.shape[1:], labels.shape[0]
        elif fmt == "npz":
            with zipfile.ZipFile(path) as archive:
                image_shape, _, _ = _npz_member_header(archive, "images")
                label_shape, _, _ = _npz_member_header(archive, "labels")
            count, shape, label_count = image_shape[0], image_shape[1:], label_shape[0]
        elif fmt == "parquet":
            count, shape = _parquet_layout(path)
            label_count = count
        else:
            assert labels_path is not None  # _discover pairs every IDX images file
            image_shape, _, _ = _idx_header(path)
            label_shape, _, _ = _idx_header(labels_path)
            count, shape, label_count = image_shape[0], image_shape[1:], label_shape[0]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as error:
        raise DataError(f"cannot read shard {path}: {error}", value=str(path)) from None
    if count != label_count:
        raise DataError(f"shard {path} has {count} images but {label_count} labels", value=str(path))
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3:
        raise DataError(f"shard {path} has samples of shape {tuple(shape)}; expected (H, W) or (C, H, W)", value=str(path))
    return int(count), tuple(int(v) for v in shape)


# --- readers of row ranges -------------------------------------------------------------


def _read_npy(shard: ShardFile, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    assert shard.labels_path is not None  # _discover pairs every .npy images file
    images = np.load(shard.path, mmap_mode="r", allow_pickle=False)
    labels = np.load(shard.labels_path, mmap_mode="r", allow_pickle=False)
    return np.array(images[start:stop]), np.array(labels[start:stop])


def _npz_member_header(archive: zipfile.ZipFile, name: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """Return shape, dtype and the byte offset of the data of array ``name`` in an open ``.npz``."""
    with archive.open(f"{name}.npy") as stream:
        shape, dtype = _npy_stream_header(stream)
        return shape, dtype, stream.tell()


def _npy_stream_header(stream: IO[bytes]) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
    else:
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
    if fortran_order or dtype.hasobject:
        raise ValueError("arrays must be C-ordered numbers, without Python objects")
    return tuple(shape), dtype


def _read_npz(shard: ShardFile, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    with zipfile.ZipFile(shard.path) as archive:
        for name in ("images", "labels"):
            shape, dtype, data_offset = _npz_member_header(archive, name)
            row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
            with archive.open(f"{name}.npy") as stream:
                stream.seek(data_offset + start * row)
                raw = stream.read((stop - start) * row)
            arrays.append(np.frombuffer(raw, dtype=dtype).reshape(stop - start, *shape[1:]))
    return arrays[0], arrays[1]


def _idx_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Return shape, dtype and the data's byte offset of an IDX file, reading only its header."""
    with _open_idx(path) as stream:
        magic = stream.read(4)
        if len(magic) != 4 or magic[0] or magic[1] or magic[2] not in IDX_TYPES or not magic[3]:
            raise ValueError(f"not an IDX file (magic number 0x{magic.hex()})")
        ndim = magic[3]
        shape = struct.unpack(f">{ndim}I", stream.read(4 * ndim))
    return tuple(shape), IDX_TYPES[magic[2]], 4 + 4 * ndim


def _open_idx(path: Path) -> io.BufferedIOBase:
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _read_idx_rows(path: Path, start: int, stop: int) -> np.ndarray:
    shape, dtype, data_offset = _idx_header(path)
    row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    with _open_idx(path) as stream:
        stream.seek(data_offset + start * row)
        raw = stream.read((stop - start) * row)
    if len(raw) != (stop - start) * row:
        raise EOFError(f"{path} is truncated")
    return np.frombuffer(raw, dtype=dtype).reshape(stop - start, *shape[1:]).astype(dtype.newbyteorder("="))


def _read_idx(shard: ShardFile, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    assert shard.labels_path is not None  # _discover pairs every IDX images file
    return _read_idx_rows(shard.path, start, stop), _read_idx_rows(shard.labels_path, start, stop)


def _parquet_layout(path: Path) -> tuple[int, tuple[int, ...]]:
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    names = file.schema_arrow.names
    if "image" not in names or "label" not in names:
        raise ValueError(f"expected columns 'image' and 'label', found {', '.join(names)}")
    metadata = file.schema_arrow.metadata or {}
    if _SHAPE_KEY in metadata:
        shape = tuple(int(v) for v in metadata[_SHAPE_KEY].decode().split(","))
    else:
        first = file.read_row_group(0, columns=["image"]).column("image")[0].as_py() if file.num_row_groups else b""
        side = int(round(len(first) ** 0.5))
        if side * side != len(first):
            raise ValueError(f"images of {len(first)} values are not square; write the shape as metadata {_SHAPE_KEY!r}")
        shape = (1, side, side)
    return file.metadata.num_rows, shape


def _read_parquet(shard: ShardFile, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.parquet as pq

    file = pq.ParquetFile(shard.path)
    images, labels = [], []
    first_row = 0
    for group in range(file.num_row_groups):
        rows = file.metadata.row_group(group).num_rows
        if first_row < stop and first_row + rows > start:
            table = file.read_row_group(group, columns=["image", "label"])
            low, high = max(start - first_row, 0), min(stop - first_row, rows)
            table = table.slice(low, high - low)
            images.append(_parquet_images(table.column("image")))
            labels.append(table.column("label").to_numpy())
        first_row += rows
        if first_row >= stop:
            break
    return np.concatenate(images), np.concatenate(labels)


def _parquet_images(column: Any) -> np.ndarray:
    """Return a Parquet image column (lists of numbers or raw bytes) as an (n, values) array."""
    import pyarrow as pa

    chunk = column.combine_chunks()
    if pa.types.is_binary(chunk.type) or pa.types.is_large_binary(chunk.type):
        return np.stack([np.frombuffer(value, dtype=np.uint8) for value in chunk.to_pylist()]) if len(chunk) else np.zeros((0, 0), np.uint8)
    values = chunk.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(len(chunk), -1)


_READERS = {"npy": _read_npy, "npz": _read_npz, "idx": _read_idx, "parquet": _read_parquet}


# --- conversion ---------------------------------------------------------------------------


def _to_float_images(images: np.ndarray, sample_shape: tuple[int, ...], path: Path) -> np.ndarray:
    if images.dtype == np.uint8:
        result = images.astype(np.float32) / 255.0
    elif np.issubdtype(images.dtype, np.floating):
        result = images.astype(np.float32, copy=False)
        if result.size and (float(result.min()) < -1e-6 or float(result.max()) > 1 + 1e-6):
            raise DataError(
                f"images in {path} range from {float(result.min()):g} to {float(result.max()):g}; floating-point "
                "images must lie in [0, 1] (store uint8 for 0-255)",
                value=str(path),
            )
    else:
        raise DataError(f"images in {path} have dtype {images.dtype}; store uint8 (0-255) or float in [0, 1]", value=str(path))
    return np.ascontiguousarray(result.reshape(len(result), *sample_shape))


def _to_labels(labels: np.ndarray, path: Path) -> np.ndarray:
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels in {path} have dtype {labels.dtype}; store integer class indices", value=str(path))
    if labels.size and int(labels.min()) < 0:
        raise DataError(f"labels in {path} include {int(labels.min())}; class indices start at 0", value=str(path))
    return labels.astype(np.int64)

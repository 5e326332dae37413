"""Scan model files for code that would run when they are loaded, without loading them.

:func:`scan_file` recognises the format from the file's bytes, not its name:

==================  ==========================================================
format              what is checked
==================  ==========================================================
``torch-zip``       every ``.pkl`` member of the zip written by ``torch.save``
                    (and ``.npy`` members of NumPy ``.npz`` archives); duplicate
                    member names; TorchScript code (``code/``) as a warning
``torch-legacy``    the five pickles of the pre-1.6 ``torch.save`` format
``pickle``          the pickle, then any further pickles that follow it
``joblib``          joblib's pickle with its inline arrays, also when compressed
                    with zlib, gzip, bz2, xz or lzma (read as a stream)
``numpy``           an ``.npy`` file; object arrays carry a pickle, which is walked
``safetensors``     the header against the file (see :mod:`.safetensors_check`)
``onnx``            external-data paths and offsets (see :mod:`.onnx_check`)
==================  ==========================================================

Anything else (including a non-pickle file named ``model.pt``) yields an
``unsupported`` finding and is flagged rather than passed as clean.

Limitations: lz4-compressed joblib files, the tar format of PyTorch before
0.4, and Keras/HDF5 files are reported as unsupported. Compressed streams are
decompressed as they are read, but their total size is not capped.
"""

from __future__ import annotations

import logging
import os
import pickletools
import tarfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import ParameterError
from .allowlist import Allowlist
from .findings import Finding, FindingKind, ScanResult, Severity
from .onnx_check import check_onnx
from .pickle_scan import walk_pickle
from .safetensors_check import check_safetensors, looks_like_safetensors
from ._streams import COMPRESSION_PREFIXES, BoundedReader, open_decompressed

__all__ = ["scan_file", "scan_files", "scan_stream", "detect_format"]

logger = logging.getLogger(__name__)

# The first pickle of the legacy torch.save format holds this number.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_LEGACY_PICKLES = 5
_PICKLE_OPCODES = frozenset(opcode.code.encode("latin-1") for opcode in pickletools.opcodes)


def scan_files(paths: Iterable[str | os.PathLike[str]], *, allowlist: Allowlist | None = None) -> list[ScanResult]:
    """Scan each file in ``paths``; folders are expanded to the files they contain, sorted."""
    results = []
    for path in _expand(paths):
        results.append(scan_file(path, allowlist=allowlist))
    return results


def scan_file(path: str | os.PathLike[str], *, allowlist: Allowlist | None = None) -> ScanResult:
    """Scan one model file without importing or executing anything from it.

    Parameters
    ----------
    path : path-like
        The file to scan.
    allowlist : Allowlist, optional
        The globals pickles may import; :meth:`Allowlist.default` when omitted.

    Returns
    -------
    ScanResult
        Its ``flagged`` property says whether the file must not be loaded.

    Raises
    ------
    ParameterError
        If ``path`` does not exist or is not a regular file.

    Examples
    --------
    >>> result = scan_file("model.pt")  # doctest: +SKIP
    >>> result.flagged, result.unlisted_globals()  # doctest: +SKIP
    (True, ['posix.system'])
    """
    path = Path(path)
    if not path.is_file():
        raise ParameterError(f"scan_file: {str(path)!r} is not a file; give the path of a model file", value=str(path))
    with path.open("rb") as stream:
        return scan_stream(stream, path=path, allowlist=allowlist)


def scan_stream(stream: BinaryIO, *, path: str | os.PathLike[str], allowlist: Allowlist | None = None) -> ScanResult:
    """Scan an open, seekable binary file; ``path`` names it in the result and locates ONNX side files.

    :func:`~mlwarden.integrity.load_model` scans and loads through one open
    file, so the bytes scanned are the bytes loaded even if the path is
    replaced in between.
    """
    allowlist = allowlist or Allowlist.default()
    stream.seek(0, os.SEEK_END)
    size = stream.tell()
    stream.seek(0)
    head = stream.read(512)
    stream.seek(0)
    fmt = detect_format(head, size, Path(path).suffix.lower())
    result = ScanResult(path=str(path), format=fmt)
    logger.debug("scanning %s as %s", path, fmt)
    if fmt == "zip":
        _scan_zip(stream, result, allowlist)
    elif fmt == "safetensors":
        result.findings.extend(check_safetensors(stream, size))
    elif fmt == "onnx":
        result.findings.extend(check_onnx(Path(path)))
    elif fmt == "numpy":
        _scan_npy(BoundedReader(stream), result, allowlist, "npy")
    elif fmt.startswith("joblib-"):
        _scan_compressed(stream, result, allowlist, fmt.removeprefix("joblib-"))
    elif fmt == "pickle":
        _scan_pickles(BoundedReader(stream), result, allowlist, "")
    else:
        _unsupported(result, head)
    return result


def detect_format(head: bytes, size: int, suffix: str = "") -> str:
    """Name the format of a file from its first bytes (at least 512 when the file has them) and suffix.

    Returns one of ``zip``, ``numpy``, ``safetensors``, ``pickle``,
    ``joblib-<compression>``, ``onnx``, ``torch-tar`` or ``unknown``. Torch and
    joblib pickles are told apart later, while walking.
    """
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x93NUMPY"):
        return "numpy"
    if looks_like_safetensors(head, size):
        return "safetensors"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    for prefix, name in COMPRESSION_PREFIXES:
        if head.startswith(prefix):
            return f"joblib-{name}"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "torch-tar"
    if suffix == ".onnx":
        return "onnx"
    if head[:1] in _PICKLE_OPCODES and suffix not in (".onnx", ".safetensors"):
        # Protocols 0 and 1 have no header; any leading opcode may start one.
        return "pickle"
    return "unknown"


def _scan_pickles(reader: BoundedReader, result: ScanResult, allowlist: Allowlist, member: str) -> None:
    """Walk the pickles of a plain pickle, joblib or legacy torch stream."""
    prefix = f"{member}, " if member else ""
    first = walk_pickle(reader, result, allowlist=allowlist, location=f"{prefix}pickle 0")
    if any(item.qualified_name == "joblib.numpy_pickle.NumpyArrayWrapper" for item in result.globals):
        result.format = "joblib"
    if not first.complete or reader.at_eof():
        return
    if first.constant == _TORCH_LEGACY_MAGIC:
        result.format = "torch-legacy"
        for index in range(1, _TORCH_LEGACY_PICKLES):
            if not walk_pickle(reader, result, allowlist=allowlist, location=f"{prefix}pickle {index}").complete:
                return
        # What follows is raw storage data, which torch.load copies and never unpickles.
        return
    # pickle.load stops at the first STOP; later pickles matter only to readers that
    # call it again, so they are walked when they parse and otherwise noted.
    index = 1
    while not reader.at_eof():
        start = reader.tell()
        trial = ScanResult(path=result.path, format=result.format)
        if not walk_pickle(reader, trial, allowlist=allowlist, location=f"{prefix}pickle {index}").complete:
            result.findings.append(
                Finding(
                    FindingKind.MALFORMED,
                    Severity.INFO,
                    f"bytes from offset {start} on are not a pickle; pickle.load does not read them",
                    f"{prefix}byte {start}",
                )
            )
            return
        result.globals.extend(trial.globals)
        result.findings.extend(trial.findings)
        index += 1


def _scan_zip(stream: BinaryIO, result: ScanResult, allowlist: Allowlist) -> None:
    try:
        archive = zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        result.findings.append(Finding(FindingKind.MALFORMED, Severity.HIGH, f"not a valid zip archive: {error}", "zip"))
        return
    with archive:
        infos = archive.infolist()
        result.format = "torch-zip" if any(info.filename.endswith("data.pkl") for info in infos) else "zip"
        for name, count in Counter(info.filename for info in infos).items():
            if count > 1:
                result.findings.append(
                    Finding(
                        FindingKind.DUPLICATE_MEMBER,
                        Severity.HIGH,
                        f"{count} members are named {name!r}; zip readers disagree on which one is loaded",
                        name,
                    )
                )
        if any("/code/" in f"/{info.filename}" and info.filename.endswith(".py") for info in infos):
            result.format = "torchscript"
            result.findings.append(
                Finding(
                    FindingKind.TORCHSCRIPT,
                    Severity.WARNING,
                    "the archive holds TorchScript code, which torch.jit.load compiles and runs; "
                    "load only the weights (safetensors or a state dict) from untrusted sources",
                    "code/",
                )
            )
            # The TorchScript unpickler resolves __torch__.* against the archive's compiled code, not Python modules.
            allowlist = allowlist.with_modules(["__torch__"])
        for info in infos:
            if info.filename.endswith(".pkl"):
                _scan_member(archive, info, result, allowlist, _scan_pickles)
            elif info.filename.endswith(".npy"):
                _scan_member(archive, info, result, allowlist, _scan_npy)


def _scan_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, result: ScanResult, allowlist: Allowlist, scan) -> None:  # type: ignore[no-untyped-def]
    try:
        with archive.open(info) as member:
            scan(BoundedReader(member), result, allowlist, info.filename)
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, zlib.error, OSError, EOFError) as error:
        # RuntimeError: an encrypted member; NotImplementedError: an unknown compression method.
        result.findings.append(
            Finding(FindingKind.UNSUPPORTED, Severity.HIGH, f"member cannot be read: {error}", info.filename)
        )


def _scan_npy(reader: BoundedReader, result: ScanResult, allowlist: Allowlist, member: str) -> None:
    """Walk the pickle inside an ``.npy`` object array; other arrays hold only numbers."""
    try:
        version = np.lib.format.read_magic(reader)
        header = (
            np.lib.format.read_array_header_1_0(reader) if version == (1, 0) else np.lib.format.read_array_header_2_0(reader)
        )
    except (ValueError, SyntaxError, OSError) as error:
        result.findings.append(Finding(FindingKind.MALFORMED, Severity.HIGH, f"not a valid .npy header: {error}", member))
        return
    if header[2].hasobject:
        walk_pickle(reader, result, allowlist=allowlist, location=f"{member}, object array")


def _scan_compressed(stream: BinaryIO, result: ScanResult, allowlist: Allowlist, compression: str) -> None:
    if compression == "lz4":
        result.findings.append(
            Finding(
                FindingKind.UNSUPPORTED,
                Severity.HIGH,
                "the file is lz4-compressed, which mlwarden cannot decompress; "
                "recompress it with zlib, gzip, bz2, xz or lzma, or save it uncompressed",
                "byte 0",
            )
        )
        return
    result.format = "joblib"
    decompressed = open_decompressed(stream, compression)
    try:
        _scan_pickles(BoundedReader(decompressed), result, allowlist, compression)
    except (OSError, EOFError, zlib.error, ValueError) as error:
        # gzip, bz2 and lzma raise these for corrupt or truncated data.
        result.findings.append(
            Finding(FindingKind.MALFORMED, Severity.HIGH, f"{compression} data is corrupt: {error}", compression)
        )


def _unsupported(result: ScanResult, head: bytes) -> None:
    if result.format == "torch-tar":
        message = "the tar format of torch.save before PyTorch 0.4 is not supported; re-save the model as safetensors"
    else:
        message = (
            f"not a pickle, PyTorch, joblib, NumPy, safetensors or ONNX file (first bytes {head[:8]!r}); "
            "it cannot be shown to be safe"
        )
    result.findings.append(Finding(FindingKind.UNSUPPORTED, Severity.HIGH, message, "byte 0"))


def _expand(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    expanded: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            expanded.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        else:
            expanded.append(path)
    return expanded

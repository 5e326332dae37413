"""Checks of a safetensors header against the file it describes.

A safetensors file is an 8-byte little-endian header length ``N``, ``N`` bytes
of JSON mapping each tensor name to its dtype, shape and ``data_offsets``
(relative to the end of the header), then the tensor data. The format cannot
carry code, but a header that lies (offsets past the end of the file, tensors
that overlap, sizes that disagree with the shape) makes readers read out of
bounds or disagree about the weights, and bytes outside every tensor can hide a
second file (a pickle or zip polyglot).

Reference: the format description in the safetensors repository (Hugging Face,
``README.md``, "Format"). Limitations: only the header is checked; the tensor
values themselves are not read.
"""

from __future__ import annotations

import json
import math
from collections import Counter
import struct
from typing import Any, BinaryIO

from .findings import Finding, FindingKind, Severity

__all__ = ["check_safetensors", "looks_like_safetensors", "MAX_HEADER_BYTES", "DTYPE_BITS"]

MAX_HEADER_BYTES = 100 * 1024 * 1024
"""The largest header accepted, as in the reference implementation (100 MB)."""

DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}
"""Bits per element of each dtype name the format defines."""


def looks_like_safetensors(head: bytes, file_size: int) -> bool:
    """Return whether ``head`` (the first bytes of a file) starts like a safetensors file."""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 2 <= length <= file_size - 8


def check_safetensors(stream: BinaryIO, file_size: int) -> list[Finding]:
    """Return the findings about the safetensors file in ``stream`` (positioned at its start).

    Parameters
    ----------
    stream : binary file
        The file, positioned at byte 0.
    file_size : int
        The file's size in bytes.

    Returns
    -------
    list of Finding
        Empty when the header is consistent with the file.
    """
    prefix = stream.read(8)
    if len(prefix) < 8:
        return [_bad("the file is shorter than the 8-byte header length", "byte 0")]
    (length,) = struct.unpack("<Q", prefix)
    if length > MAX_HEADER_BYTES:
        return [_bad(f"the header length {length} exceeds the {MAX_HEADER_BYTES}-byte limit", "byte 0")]
    if length > file_size - 8:
        return [_bad(f"the header length {length} runs past the end of the {file_size}-byte file", "byte 0")]
    try:
        header = json.loads(stream.read(length).decode("utf-8"), object_pairs_hook=_reject_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as error:
        return [_bad(f"the header is not valid JSON: {error}", "header")]
    if not isinstance(header, dict):
        return [_bad("the header is not a JSON object", "header")]
    return _check_entries(header, file_size - 8 - length)


def _check_entries(header: dict[str, Any], data_size: int) -> list[Finding]:
    findings: list[Finding] = []
    metadata = header.get("__metadata__")
    if metadata is not None and (
        not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values())
    ):
        findings.append(_bad("__metadata__ must map strings to strings", "header.__metadata__"))
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        where = f"tensor {name!r}"
        problem = _entry_problem(entry)
        if problem:
            findings.append(_bad(problem, where))
            continue
        begin, end = entry["data_offsets"]
        if end > data_size:
            findings.append(_bad(f"data_offsets [{begin}, {end}] run past the {data_size} data bytes", where))
            continue
        bits = math.prod(entry["shape"]) * DTYPE_BITS[entry["dtype"]]
        if bits % 8 or bits // 8 != end - begin:
            findings.append(
                _bad(f"shape {entry['shape']} of {entry['dtype']} needs {bits / 8:g} bytes, offsets give {end - begin}", where)
            )
            continue
        if end > begin:
            spans.append((begin, end, name))
    findings.extend(_check_layout(spans, data_size))
    return findings


def _entry_problem(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return "the entry is not a JSON object"
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BITS:
        return f"unknown dtype {dtype!r}"
    if not isinstance(shape, list) or not all(_is_size(n) for n in shape):
        return f"shape {shape!r} is not a list of non-negative integers"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_size(n) for n in offsets)):
        return f"data_offsets {offsets!r} is not a pair of non-negative integers"
    if offsets[0] > offsets[1]:
        return f"data_offsets {offsets!r} end before they begin"
    return None


def _check_layout(spans: list[tuple[int, int, str]], data_size: int) -> list[Finding]:
    findings = []
    covered = 0
    for begin, end, name in sorted(spans):
        if begin < covered:
            findings.append(_bad(f"bytes [{begin}, {end}) overlap the tensor before it", f"tensor {name!r}"))
        elif begin > covered:
            findings.append(_bad(f"bytes [{covered}, {begin}) belong to no tensor", "data"))
        covered = max(covered, end)
    if covered < data_size:
        findings.append(
            _bad(f"{data_size - covered} bytes after the last tensor belong to no tensor and may hide another file", "data")
        )
    return findings


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    counts = Counter(key for key, _ in pairs)
    duplicates = sorted(key for key, count in counts.items() if count > 1)
    if duplicates:
        # Readers keep different copies of a duplicated key, so they could load different weights.
        raise ValueError(f"duplicate keys {duplicates}")
    return dict(pairs)


def _bad(message: str, location: str) -> Finding:
    return Finding(FindingKind.BAD_HEADER, Severity.HIGH, message, location)

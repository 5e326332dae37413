"""Checks of an ONNX model's external-data references.

Large ONNX models keep tensor data in side files named by each tensor's
``external_data`` entries (``location``, ``offset``, ``length``). A location
that is absolute, climbs out with ``..`` or passes through a symbolic link
makes the loader read any file the process can read (for example
``/etc/passwd`` or an SSH key) into a tensor; an offset or length past the end
of the file makes it read out of range. The model is parsed with
``onnx.load(..., load_external_data=False)``, so no side file is read.

Reference: ONNX external data (onnx/docs/ExternalData.md). Limitations: custom
operator domains are not checked, since ONNX Runtime loads custom operators
only from libraries the caller registers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from .findings import Finding, FindingKind, Severity

__all__ = ["check_onnx"]


def check_onnx(path: str | Path) -> list[Finding]:
    """Return the findings about the ONNX model at ``path`` and the external data it references.

    A file that does not parse as an ONNX model gives one ``malformed`` finding.
    """
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as error:
        return [
            Finding(
                FindingKind.MALFORMED,
                Severity.HIGH,
                f"not a valid ONNX model: {error}; a file that cannot be parsed cannot be shown to be safe",
                "model",
            )
        ]
    folder = path.resolve().parent
    findings: list[Finding] = []
    for where, tensor in _tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            findings.extend(_check_external(tensor, where, folder))
    return findings


def _tensors(model: Any) -> Iterator[tuple[str, Any]]:
    """Yield ``(location, TensorProto)`` for every tensor in the model, subgraphs and functions included."""
    yield from _graph_tensors(model.graph, "graph")
    for function in model.functions:
        for node in function.node:
            yield from _node_tensors(node, f"function {function.name!r}")


def _graph_tensors(graph: Any, where: str) -> Iterator[tuple[str, Any]]:
    for tensor in graph.initializer:
        yield f"{where} initializer {tensor.name!r}", tensor
    for sparse in graph.sparse_initializer:
        yield f"{where} sparse initializer {sparse.values.name!r}", sparse.values
        yield f"{where} sparse initializer {sparse.values.name!r} indices", sparse.indices
    for node in graph.node:
        yield from _node_tensors(node, where)


def _node_tensors(node: Any, where: str) -> Iterator[tuple[str, Any]]:
    for attribute in node.attribute:
        place = f"{where} node {node.name or node.op_type!r} attribute {attribute.name!r}"
        if attribute.HasField("t"):
            yield place, attribute.t
        for tensor in attribute.tensors:
            yield place, tensor
        if attribute.HasField("sparse_tensor"):
            yield place, attribute.sparse_tensor.values
            yield place, attribute.sparse_tensor.indices
        for sparse in attribute.sparse_tensors:
            yield place, sparse.values
            yield place, sparse.indices
        if attribute.HasField("g"):
            yield from _graph_tensors(attribute.g, place)
        for subgraph in attribute.graphs:
            yield from _graph_tensors(subgraph, place)


def _check_external(tensor: Any, where: str, folder: Path) -> list[Finding]:
    entries = {entry.key: entry.value for entry in tensor.external_data}
    location = entries.get("location", "")
    escape = _escape_reason(location, folder)
    if escape:
        return [Finding(FindingKind.EXTERNAL_DATA, Severity.HIGH, f"external data location {location!r} {escape}", where)]
    target = folder / location
    if not target.is_file():
        return [
            Finding(
                FindingKind.EXTERNAL_DATA,
                Severity.WARNING,
                f"external data file {location!r} is missing, so the model cannot be loaded",
                where,
            )
        ]
    size = target.stat().st_size
    try:
        offset = int(entries.get("offset", "0"))
        length = int(entries["length"]) if "length" in entries else size - offset
    except ValueError:
        return [_range_finding(f"offset {entries.get('offset')!r} or length {entries.get('length')!r} is not an integer", where)]
    if offset < 0 or length < 0 or offset + length > size:
        return [
            _range_finding(
                f"bytes [{offset}, {offset + length}) of {location!r} lie outside the file's {size} bytes", where
            )
        ]
    return []


def _escape_reason(location: str, folder: Path) -> str | None:
    """Return how ``location`` escapes ``folder``, or None when it stays inside."""
    if not location:
        return "is empty"
    if "\x00" in location:
        return "contains a NUL byte"
    if PurePosixPath(location).is_absolute() or PureWindowsPath(location).is_absolute() or location.startswith("\\"):
        return "is an absolute path, outside the model's folder"
    parts = location.replace("\\", "/").split("/")
    if ".." in parts:
        return "climbs out of the model's folder with '..'"
    resolved = Path(os.path.realpath(folder / location))
    if not resolved.is_relative_to(folder):
        return f"resolves through a symbolic link to {str(resolved)!r}, outside the model's folder"
    return None


def _range_finding(message: str, where: str) -> Finding:
    return Finding(FindingKind.EXTERNAL_DATA, Severity.HIGH, message, where)

"""The versioned ``results.json`` file that every assessment writes first.

Reports and figures are rendered from this file alone, so results from
several runs or workers can be merged and rendered again.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import PlanError

__all__ = ["SCHEMA", "write_results", "read_results", "write_json_atomically"]

SCHEMA = "mlwarden.results/1"


def _finite(value: Any) -> Any:
    """Replace NaN and infinities, which JSON lacks, by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def write_json_atomically(path: Path, document: Any, **dump_options: Any) -> Path:
    """Write ``document`` as JSON to ``path`` through a temporary file, so a crash never leaves half a file.

    The file gets the mode that ``open()`` would give under the process's
    umask (0644 under umask 022), not the 0600 of a temporary file.
    """
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".json", dir=path.parent)
    mask = os.umask(0)
    os.umask(mask)
    os.fchmod(handle, 0o666 & ~mask)
    with os.fdopen(handle, "w") as stream:
        json.dump(document, stream, **dump_options)
        stream.write("\n")
    os.replace(temporary, path)
    return path


def write_results(results: dict[str, Any], directory: str | Path) -> Path:
    """Write ``results.json`` into ``directory`` atomically and return its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return write_json_atomically(directory / "results.json", _finite(results), indent=1)


def read_results(path: str | Path) -> dict[str, Any]:
    """Read a ``results.json`` file (or the one in a directory) and check its schema.

    Raises
    ------
    PlanError
        The file is missing, is not JSON, or has another schema.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise PlanError(f"results file not found: {path}", value=str(path)) from None
    except json.JSONDecodeError as error:
        raise PlanError(f"{path} is not valid JSON: {error}", value=str(path)) from None
    if not isinstance(results, dict) or results.get("schema") != SCHEMA:
        found = results.get("schema") if isinstance(results, dict) else type(results).__name__
        raise PlanError(f"{path} has schema {found!r}, expected {SCHEMA!r}", value=str(path))
    return results

"""Weight files: safetensors with a JSON sidecar that records where they came from.

The sidecar ``NAME.json`` beside ``NAME.safetensors`` stores the
architecture, its constructor arguments, the data set, the clean test
accuracy and the SHA-256 of the weights file. :func:`load_weights` checks the
hash before it reads a tensor, so a swapped or altered file is rejected.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import IntegrityError, ModelError

__all__ = ["save_weights", "load_weights", "read_sidecar", "sidecar_path", "file_sha256", "state_mismatch", "SIDECAR_FORMAT"]

logger = logging.getLogger(__name__)

SIDECAR_FORMAT = "mlwarden.weights/1"
_CHUNK = 1 << 20


def sidecar_path(weights_path: str | Path) -> Path:
    """Return the path of the JSON sidecar of a weights file."""
    return Path(weights_path).with_suffix(".json")


def file_sha256(path: str | Path) -> str:
    """Return the hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Save a model's state dict as safetensors and write its sidecar.

    Parameters
    ----------
    model : nn.Module
    path : str or Path
        Target file; ``.safetensors`` is appended when missing.
    metadata : dict
        At least ``architecture``; usually also ``architecture_kwargs``,
        ``dataset`` and ``clean_test_accuracy``.

    Returns
    -------
    Path
        The weights file. Its sidecar lies beside it.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(path))
    sidecar = {"format": SIDECAR_FORMAT, **metadata}
    sidecar["sha256"] = file_sha256(path)
    sidecar.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    sidecar_path(path).write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    logger.info("saved weights to %s (sha256 %s)", path, sidecar["sha256"])
    return path


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """Return the sidecar of a weights file.

    Raises
    ------
    ModelError
        The sidecar is missing or is not valid JSON of this format.
    """
    side = sidecar_path(path)
    try:
        data = json.loads(side.read_text())
    except FileNotFoundError:
        raise ModelError(
            f"{path} has no sidecar {side}; weights saved by 'mlwarden train' come with one, or load the "
            "architecture yourself with --model package.module:factory --weights FILE",
            value=str(path),
        ) from None
    except json.JSONDecodeError as error:
        raise ModelError(f"sidecar {side} is not valid JSON: {error}", value=str(side)) from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise ModelError(f"sidecar {side} is not an mlwarden weights sidecar ({SIDECAR_FORMAT})", value=str(side))
    return data


def load_weights(path: str | Path, *, verify: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a safetensors weights file and its sidecar, checking the file's SHA-256.

    Raises
    ------
    IntegrityError
        The file's hash differs from the one in the sidecar.
    ModelError
        The file or its sidecar is missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}", value=str(path))
    sidecar = read_sidecar(path)
    if verify:
        actual = file_sha256(path)
        if actual != sidecar.get("sha256"):
            raise IntegrityError(
                f"{path} has SHA-256 {actual}, but its sidecar records {sidecar.get('sha256')}; the file was "
                "altered or swapped, so restore it or retrain",
                value=str(path),
            )
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ModelError(f"cannot read safetensors file {path}: {error}", value=str(path)) from None
    return state, sidecar

def state_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str:
    """Describe in one line how ``state`` differs from the model's own state dict (first difference of each kind)."""
    own = model.state_dict()
    parts = []
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    shapes = [key for key in own if key in state and tuple(own[key].shape) != tuple(state[key].shape)]
    if shapes:
        key = shapes[0]
        parts.append(
            f"{_count(len(shapes))} {'differs' if len(shapes) == 1 else 'differ'} in shape, first {key!r}: {tuple(state[key].shape)} in the file, "
            f"{tuple(own[key].shape)} in the model"
        )
    if missing:
        parts.append(f"{_count(len(missing))} missing from the file, first {missing[0]!r}")
    if unexpected:
        parts.append(f"{_count(len(unexpected))} unknown to the model, first {unexpected[0]!r}")
    return ", ".join(parts) or "the state dict does not load"


def _count(number: int) -> str:
    return f"{number} tensor" if number == 1 else f"{number} tensors"

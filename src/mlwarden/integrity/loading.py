"""Safe loading of model files: scan first, reject what is flagged, then load the safest way.

:func:`load_model` opens the file once, scans that open file with
:func:`~mlwarden.integrity.model_scan.scan_stream`, and loads from the same
open file, so swapping the path between the scan and the load does not help an
attacker. By format:

- safetensors: ``safetensors.torch.load`` of the checked bytes, giving a dict of tensors;
- PyTorch (zip or legacy): ``torch.load(weights_only=True)``;
- joblib and plain pickles: ``joblib.load`` or ``pickle.load``, only after the
  scan found nothing outside the allow-list;
- NumPy ``.npy``: ``numpy.load(allow_pickle=False)`` unless it holds objects;
- ONNX: ``onnx.load``, returning the ``ModelProto`` with its external data.

A flagged file raises :class:`~mlwarden.errors.UnsafeFileError` naming what
was found, unless the caller passes ``allow_unsafe=True`` (then PyTorch files
still try ``weights_only=True`` first). An optional signed manifest is checked
before anything is parsed.

Limitations: a file changed in place (not replaced) between scan and load can
still differ; keep model folders writable only by their owner.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..errors import IntegrityError, ParameterError, UnsafeFileError
from .allowlist import Allowlist
from .findings import ScanResult, Severity
from .model_scan import scan_stream

__all__ = ["load_model"]

logger = logging.getLogger(__name__)


def load_model(
    path: str | os.PathLike[str],
    *,
    allow_unsafe: bool = False,
    allowlist: Allowlist | None = None,
    map_location: Any = "cpu",
    manifest: str | os.PathLike[str] | None = None,
    public_key: Ed25519PublicKey | str | os.PathLike[str] | None = None,
) -> Any:
    """Scan a model file and load it only if it is safe.

    Parameters
    ----------
    path : path-like
        The model file.
    allow_unsafe : bool, default False
        Load a flagged file anyway. Only for files from a source you trust as
        much as code you run: a flagged pickle can run anything.
    allowlist : Allowlist, optional
        The globals pickles may import; :meth:`Allowlist.default` when omitted.
    map_location : default "cpu"
        Passed to ``torch.load``.
    manifest, public_key : path-like, optional
        A signed manifest listing this file, and the public key (object or PEM
        path) it must be signed with; the file must be listed and unchanged.

    Returns
    -------
    object
        A dict of tensors (safetensors, state dicts), whatever the pickle holds
        (joblib, pickle, full torch checkpoints), a NumPy array, or an
        ``onnx.ModelProto``.

    Raises
    ------
    UnsafeFileError
        If the scan flags the file and ``allow_unsafe`` is False.
    IntegrityError
        If a manifest is given and the file is not listed, changed, or the
        signature fails.
    ParameterError
        If ``path`` is not a file, or only one of ``manifest`` and ``public_key`` is given.

    Examples
    --------
    >>> state_dict = load_model("lenet5.safetensors")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise ParameterError(f"load_model: {str(path)!r} is not a file; give the path of a model file", value=str(path))
    if (manifest is None) != (public_key is None):
        raise ParameterError("load_model: give both manifest and public_key, or neither", value=str(manifest))
    if manifest is not None and public_key is not None:
        _check_manifest(path, Path(manifest), public_key)
    with path.open("rb") as stream:
        result = scan_stream(stream, path=path, allowlist=allowlist)
        if result.flagged:
            if not allow_unsafe:
                raise UnsafeFileError(_rejection_message(result), value=str(path))
            logger.warning("loading flagged file %s because allow_unsafe=True: %s", path, _summary(result))
        stream.seek(0)
        return _load(stream, path, result, map_location, allow_unsafe)


def _load(stream: io.BufferedReader, path: Path, result: ScanResult, map_location: Any, allow_unsafe: bool) -> Any:
    fmt = result.format
    if fmt == "safetensors":
        from safetensors.torch import load

        return load(stream.read())
    if fmt == "onnx":
        import onnx

        return onnx.load(str(path))
    if fmt in ("numpy", "zip"):
        import numpy as np

        # Reached only when the scan passed every pickle inside (or allow_unsafe), like joblib and pickle below.
        loaded = np.load(stream, allow_pickle=True)
        return dict(loaded) if fmt == "zip" else loaded
    if fmt == "torchscript":
        if not allow_unsafe:
            raise UnsafeFileError(
                f"load_model: {str(path)!r} is a TorchScript archive, whose code torch.jit.load runs; "
                "export the weights as safetensors or a state dict, or pass allow_unsafe=True if you trust it",
                value=str(path),
            )
        import torch

        return torch.jit.load(stream, map_location=map_location)
    if fmt in ("torch-zip", "torch-legacy"):
        return _torch_load(stream, path, map_location, allow_unsafe)
    if fmt == "joblib":
        import joblib

        return joblib.load(stream)
    if fmt == "pickle":
        return pickle.load(stream)
    raise UnsafeFileError(f"load_model: {str(path)!r} is of format {fmt!r}, which load_model cannot load", value=str(path))


def _torch_load(stream: io.BufferedReader, path: Path, map_location: Any, allow_unsafe: bool) -> Any:
    import torch

    try:
        return torch.load(stream, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if not allow_unsafe:
            raise UnsafeFileError(
                f"load_model: torch.load(weights_only=True) rejected {str(path)!r}: {error}; "
                "save a state dict (model.state_dict()) or safetensors instead of a whole model",
                value=str(path),
            ) from None
    logger.warning("loading %s with weights_only=False because allow_unsafe=True", path)
    stream.seek(0)
    return torch.load(stream, map_location=map_location, weights_only=False)


def _check_manifest(path: Path, manifest: Path, public_key: Ed25519PublicKey | str | os.PathLike[str]) -> None:
    from .keys import load_public_key
    from .manifest import FileStatus, verify_manifest

    key = public_key if isinstance(public_key, Ed25519PublicKey) else load_public_key(public_key)
    report = verify_manifest(manifest, key, progress=False)
    if not report.signature_valid:
        raise IntegrityError(f"load_model: manifest {str(manifest)!r} failed verification: {report.signature_detail}", value=str(manifest))
    base = manifest.resolve().parent
    target = path.resolve()
    for check in report.files:
        if (base / check.path).resolve() == target:
            if check.status is not FileStatus.OK:
                raise IntegrityError(f"load_model: {str(path)!r} is {check.status.value} since it was signed: {check.detail}", value=str(path))
            return
    raise IntegrityError(f"load_model: {str(path)!r} is not listed in manifest {str(manifest)!r}", value=str(path))


def _summary(result: ScanResult) -> str:
    flagged = [finding for finding in result.findings if finding.severity >= Severity.HIGH]
    return "; ".join(f"{finding.message} ({finding.location})" for finding in flagged[:5]) + (
        f"; and {len(flagged) - 5} more" if len(flagged) > 5 else ""
    )


def _rejection_message(result: ScanResult) -> str:
    names = result.unlisted_globals()
    imported = f"it imports {', '.join(names)}, outside the allow-list; " if names else ""
    return (
        f"load_model: rejected {result.path!r} ({result.format}): {imported}{_summary(result)}. "
        "Fix: get the weights as safetensors or a state dict from a trusted source, or, only if you trust "
        "the file like code, pass allow_unsafe=True"
    )

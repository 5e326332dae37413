"""The served model: loading with verification, the input it takes, and batched probabilities.

The service refuses to start when the model cannot be verified: a weights
file whose SHA-256 differs from its sidecar's (checked by
:func:`mlwarden.models.load_weights`), or, with a signed manifest, a model
file that is not listed as intact in it or a manifest whose signature fails.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.datasets import FASHION_MNIST_CLASSES, MNIST_CLASSES
from ..errors import IntegrityError, ModelError, ParameterError
from ..models import LoadedModel, resolve_model
from ..models.weights import sidecar_path
from .payload import InputSpec

__all__ = ["ServedModel", "load_served_model", "verify_model_manifest"]

logger = logging.getLogger(__name__)

# Input shape of the zoo architectures, by sidecar architecture name.
_ZOO_INPUT_SHAPES = {"lenet5": (1, 28, 28)}
_DEFAULT_CLASS_NAMES = {"fashion-mnist": FASHION_MNIST_CLASSES, "mnist": MNIST_CLASSES}


@dataclass
class ServedModel:
    """A classifier in eval mode with what the service needs to know about it.

    Attributes
    ----------
    module : nn.Module
        Returns logits (N, num_classes) for float32 inputs (N, C, H, W) in ``spec.bounds``.
    name : str
    spec : InputSpec
    num_classes : int
    sha256 : str or None
        Hash of the weights file, as verified at load time.
    class_names : tuple of str
    """

    module: nn.Module
    name: str
    spec: InputSpec
    num_classes: int
    sha256: str | None = None
    class_names: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        *,
        name: str = "model",
        input_shape: tuple[int, int, int] = (1, 28, 28),
        sha256: str | None = None,
        class_names: tuple[str, ...] = (),
    ) -> ServedModel:
        """Wrap a module, reading its bounds and, from one forward pass, its number of classes."""
        if len(input_shape) != 3 or any(int(size) < 1 for size in input_shape):
            raise ParameterError(f"input shape must be (C, H, W) of positive sizes, got {input_shape!r}", value=input_shape)
        shape = tuple(int(size) for size in input_shape)
        bounds = tuple(float(value) for value in getattr(module, "bounds", (0.0, 1.0)))
        module.eval()
        with torch.no_grad():
            try:
                output = module(torch.full((1, *shape), bounds[0], dtype=torch.float32))
            except Exception as error:  # any failure of a user's forward pass is a model error
                raise ModelError(
                    f"model {name} failed on an input of shape {[1, *shape]}: {type(error).__name__}: {error}; "
                    "pass --input-shape C,H,W",
                    value=shape,
                ) from None
        if not isinstance(output, torch.Tensor) or output.dim() != 2:
            raise ModelError(f"model {name} must return logits of shape (N, classes), got {getattr(output, 'shape', type(output))}")
        num_classes = int(output.shape[1])
        names = class_names if len(class_names) == num_classes else tuple(str(index) for index in range(num_classes))
        return cls(module, name, InputSpec(shape, (bounds[0], bounds[1])), num_classes, sha256, names)  # type: ignore[arg-type]

    @torch.no_grad()
    def probabilities(self, inputs: torch.Tensor) -> torch.Tensor:
        """Return softmax probabilities, float32 (N, num_classes)."""
        return torch.softmax(self.module(inputs).to(torch.float32), dim=1)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sha256": self.sha256,
            "input": self.spec.to_dict(),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
        }


def verify_model_manifest(files: list[Path], manifest: str | os.PathLike[str], public_key: str | os.PathLike[str]) -> None:
    """Raise :class:`IntegrityError` unless every file is listed as intact in the signed manifest."""
    from ..integrity import FileStatus, load_public_key, verify_manifest

    report = verify_manifest(manifest, load_public_key(public_key), progress=False)
    if not report.signature_valid:
        raise IntegrityError(f"manifest {str(manifest)!r} failed verification: {report.signature_detail}", value=str(manifest))
    base = Path(manifest).resolve().parent
    checks = {(base / check.path).resolve(): check for check in report.files}
    for path in files:
        check = checks.get(path.resolve())
        if check is None:
            raise IntegrityError(f"{str(path)!r} is not listed in manifest {str(manifest)!r}; sign it first", value=str(path))
        if check.status is not FileStatus.OK:
            raise IntegrityError(
                f"{str(path)!r} is {check.status.value} since manifest {str(manifest)!r} was signed: {check.detail}",
                value=str(path),
            )


def load_served_model(
    spec: str = "lenet5",
    *,
    weights: str | os.PathLike[str] | None = None,
    input_shape: tuple[int, int, int] | None = None,
    manifest: str | os.PathLike[str] | None = None,
    public_key: str | os.PathLike[str] | None = None,
) -> ServedModel:
    """Load and verify the model that ``mlwarden serve --model`` names.

    Parameters
    ----------
    spec : str, default "lenet5"
        Anything :func:`mlwarden.models.resolve_model` takes; the default is
        the LeNet-5 shipped with mlwarden.
    weights : path-like, optional
        Weights for a ``package.module:factory`` spec.
    input_shape : (C, H, W), optional
        Default: the zoo architecture's, else (1, 28, 28).
    manifest, public_key : path-like, optional
        A signed manifest that must list the model file (and its sidecar) as intact.

    Raises
    ------
    IntegrityError
        The weights' hash differs from their sidecar's, or the manifest check fails.
    ModelError
        The model cannot be loaded or does not return logits.
    """
    if (manifest is None) != (public_key is None):
        raise ParameterError("pass both --manifest and --public-key, or neither", value=str(manifest or public_key))
    loaded: LoadedModel = resolve_model(spec, weights=None if weights is None else Path(weights))
    if manifest is not None and public_key is not None:
        files = _model_files(loaded, weights)
        if not files:
            raise IntegrityError(
                f"model {spec!r} has no file to check against the manifest; serve a weights file instead", value=spec
            )
        verify_model_manifest(files, manifest, public_key)
    architecture = loaded.metadata.get("architecture")
    shape = input_shape or _ZOO_INPUT_SHAPES.get(str(architecture), (1, 28, 28))
    names = _DEFAULT_CLASS_NAMES.get(str(loaded.metadata.get("dataset")), ())
    served = ServedModel.from_module(loaded.model, name=loaded.name, input_shape=shape, sha256=loaded.sha256, class_names=names)
    logger.info("loaded model %s from %s (sha256 %s)", loaded.name, loaded.source, loaded.sha256)
    return served


def _model_files(loaded: LoadedModel, weights: str | os.PathLike[str] | None) -> list[Path]:
    if loaded.source == "zoo":
        from ..models.zoo import PRETRAINED, WEIGHTS_DIR

        path = WEIGHTS_DIR / PRETRAINED[loaded.name]
        return [path, sidecar_path(path)]
    if weights is not None:
        return [Path(weights)]
    path = Path(loaded.source)
    if path.suffix == ".safetensors":
        return [path, sidecar_path(path)]
    return [path] if path.is_file() else []

"""Resolve the ``--model`` argument into a ready ``nn.Module`` and check its output.

Accepted forms:

- a zoo name (``lenet5``): the architecture with its shipped weights;
- a ``.safetensors`` file with an mlwarden sidecar (written by ``mlwarden train``);
- a TorchScript file (``.pt``, ``.pth``, ``.ts``, ``.torchscript``) saved with ``torch.jit.save``;
- an ONNX file (``.onnx``), run with ONNX Runtime as a query model: black-box
  and transfer attacks work on it, white-box attacks raise a ModelError;
- ``package.module:factory`` with a weights file (safetensors, or a state
  dict saved by ``torch.save``, read with ``weights_only=True``).
"""

from __future__ import annotations

import importlib
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError
from .weights import file_sha256, state_mismatch
from .zoo import ARCHITECTURES, load_from_weights, load_pretrained

__all__ = ["LoadedModel", "resolve_model", "check_model_output", "TORCHSCRIPT_SUFFIXES"]

logger = logging.getLogger(__name__)

TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript")


@dataclass
class LoadedModel:
    """A model ready for assessment, with what is known about where it came from."""

    model: nn.Module
    name: str
    source: str
    sha256: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """Return the plain description stored in ``results.json``."""
        return {"name": self.name, "source": self.source, "sha256": self.sha256, **_public(self.metadata)}


def _public(metadata: dict[str, Any]) -> dict[str, Any]:
    keys = ("architecture", "dataset", "clean_test_accuracy", "defense")
    return {key: metadata[key] for key in keys if key in metadata}


def resolve_model(spec: str, *, weights: str | Path | None = None) -> LoadedModel:
    """Load the model named by ``spec`` (see the module docstring) in eval mode.

    Raises
    ------
    ModelError
        The spec matches no accepted form, the file cannot be loaded, or the
        factory cannot be imported or called.
    """
    if spec in ARCHITECTURES and weights is None:
        model, sidecar = load_pretrained(spec)
        return LoadedModel(model, spec, "zoo", sidecar.get("sha256"), sidecar)
    if ":" in spec and not Path(spec).exists():
        return _from_factory(spec, weights)
    path = Path(spec)
    if spec in ARCHITECTURES:
        raise ModelError(
            f"--weights {weights} with the zoo model {spec!r}: the zoo loads its own weights; for weights of your "
            f"own pass their .safetensors file (with its sidecar) as the model, or package.module:factory --weights "
            "FILE for a state dict",
            value=str(weights),
        )
    if not path.exists():
        raise ModelError(
            f"model {spec!r} is neither a zoo name ({', '.join(sorted(ARCHITECTURES))}), an existing file, "
            "nor package.module:factory",
            value=spec,
        )
    if path.suffix == ".safetensors":
        model, sidecar = load_from_weights(path)
        return LoadedModel(model, path.stem, str(path), sidecar.get("sha256"), sidecar)
    if path.suffix in TORCHSCRIPT_SUFFIXES:
        return _from_torchscript(path)
    if path.suffix == ".onnx":
        from .onnx_runtime import OnnxQueryModel

        return LoadedModel(OnnxQueryModel(path), path.stem, str(path), file_sha256(path), {"architecture": "onnx"})
    raise ModelError(
        f"cannot load model file {path}: expected .safetensors (with its sidecar), .onnx or a TorchScript file "
        f"({', '.join(TORCHSCRIPT_SUFFIXES)}); for a plain state dict pass --model package.module:factory --weights FILE",
        value=str(path),
    )


def _from_torchscript(path: Path) -> LoadedModel:
    if not zipfile.is_zipfile(path):
        raise ModelError(
            f"{path} is not a TorchScript archive; save the model with torch.jit.save(torch.jit.script(model), "
            "PATH), or pass package.module:factory --weights FILE for a state dict",
            value=str(path),
        )
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(
            f"{path} is not a TorchScript model ({first_line}); save it with torch.jit.save, or pass "
            "package.module:factory --weights FILE for a state dict",
            value=str(path),
        ) from None
    return LoadedModel(model.eval(), path.stem, str(path), file_sha256(path))


def _from_factory(spec: str, weights: str | Path | None) -> LoadedModel:
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ModelError(
            f"cannot import module {module_name!r} for model {spec!r}: {error}; make it importable, for example "
            "with PYTHONPATH set to the folder that holds it",
            value=spec,
        ) from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ModelError(f"{module_name} has no callable {attribute!r} for model {spec!r}", value=spec)
    try:
        model = factory()
    except Exception as error:  # the user's own code: any failure is reported as a model error
        raise ModelError(
            f"model factory {spec!r} failed when called without arguments: {type(error).__name__}: {error}; the "
            "factory must build the model with no arguments",
            value=spec,
        ) from error
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec} returned {type(model).__name__}, expected a torch.nn.Module", value=spec)
    digest = None
    if weights is not None:
        state = _read_state_dict(Path(weights))
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise ModelError(
                f"weights {weights} do not fit {spec}: {state_mismatch(model, state)}; pass the weights saved from "
                "this factory's model",
                value=str(weights),
            ) from None
        digest = file_sha256(weights)
    else:
        logger.warning("model %s has no --weights: its parameters are those the factory set", spec)
    return LoadedModel(model.eval(), attribute, spec, digest)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}", value=str(path))
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for unsafe or corrupt files
        logger.debug("torch.load(weights_only=True) failed on %s: %s", path, error)
        raise ModelError(
            f"cannot load {path} as a state dict: it is corrupt or needs code to load. mlwarden loads weights only with "
            "torch.load(weights_only=True) and rejects files that need code to load; save the weights with "
            "safetensors or torch.save(model.state_dict())",
            value=str(path),
        ) from None
    if not isinstance(state, dict):
        raise ModelError(f"{path} holds a {type(state).__name__}, expected a state dict", value=str(path))
    return state


def check_model_output(model: nn.Module, sample: torch.Tensor, num_classes: int) -> None:
    """Check that the model maps a batch to float logits of shape (N, num_classes).

    Raises
    ------
    ModelError
        The forward pass fails, or returns another type, shape or dtype.
    """
    try:
        with torch.no_grad():
            output = model(sample)
    except Exception as error:  # any failure of a user's forward pass is a model error
        raise ModelError(
            f"the model failed on a batch of shape {tuple(sample.shape)} (float32 in [0, 1]): "
            f"{type(error).__name__}: {error}",
        ) from None
    if not isinstance(output, torch.Tensor):
        raise ModelError(f"the model returned {type(output).__name__}, expected a tensor of logits")
    expected = (sample.shape[0], num_classes)
    if tuple(output.shape) != expected:
        raise ModelError(
            f"the model returned shape {tuple(output.shape)} for {sample.shape[0]} inputs, expected {expected} "
            f"(one logit per class of the data set)",
            value=tuple(output.shape),
        )
    if not output.dtype.is_floating_point:
        raise ModelError(f"the model returned dtype {output.dtype}, expected floating-point logits", value=output.dtype)


"""Feature extraction for poisoning detectors and feature-space attacks.

Detectors of poisoned data work in a model's feature space: the penultimate
activations for spectral signatures and activation clustering, any layer for
outlier detection. Feature maps of convolutional layers keep their shape
(N, C, H, W) here; detectors flatten every channel and position themselves.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ...errors import ParameterError

__all__ = ["feature_extractor", "extract_features", "flatten_features"]

FeatureFunction = Callable[[torch.Tensor], torch.Tensor]


def feature_extractor(model: nn.Module, layer: str | None = None) -> FeatureFunction:
    """Return a function mapping inputs to the model's features, with a graph for gradients.

    Parameters
    ----------
    model : nn.Module
    layer : str, optional
        Name of a submodule (as in ``model.named_modules()``) whose output is
        taken; default the model's ``features(x)`` method.

    Raises
    ------
    ParameterError
        ``layer`` is None and the model has no ``features`` method, or the
        model has no submodule of that name.
    """
    owner = "feature_extractor"
    if layer is None:
        features = getattr(model, "features", None)
        if not callable(features):
            raise ParameterError(
                f"{owner}: {type(model).__name__} has no features(x) method; pass layer=NAME, one of the names in "
                "model.named_modules()",
                value=type(model).__name__,
            )
        return features
    modules = dict(model.named_modules())
    if not layer or layer not in modules:
        known = ", ".join(name for name in modules if name)
        raise ParameterError(f"{owner}: the model has no submodule {layer!r}; its submodules are {known}", value=layer)
    target = modules[layer]

    def extract(inputs: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        handle = target.register_forward_hook(lambda _module, _inputs, output: captured.append(output))
        try:
            model(inputs)
        finally:
            handle.remove()
        return captured[-1]

    return extract


@torch.no_grad()
def extract_features(
    model: nn.Module, inputs: torch.Tensor, *, layer: str | None = None, batch_size: int = 1000
) -> np.ndarray:
    """Return the model's features of all inputs as a float32 NumPy array, computed in eval mode.

    The shape is whatever the layer returns per sample: (N, D) for a dense
    layer, (N, C, H, W) for a convolutional one. The model's mode is restored.
    """
    extract = feature_extractor(model, layer)
    was_training = model.training
    model.eval()
    try:
        parts = [extract(inputs[start : start + batch_size]).detach().cpu() for start in range(0, len(inputs), batch_size)]
    finally:
        model.train(was_training)
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(parts).numpy().astype(np.float32, copy=False)


def flatten_features(features: object, owner: str, count: int | None = None) -> np.ndarray:
    """Return features as a float64 (N, D) array, with every channel and position of a feature map kept.

    A (N, C, H, W) feature map becomes (N, C*H*W): no channel is dropped or
    averaged away, so a poison signal carried by any single channel stays visible.

    Raises
    ------
    ParameterError
        The features are not an array or tensor of at least two dimensions,
        contain NaN or infinity, or their count differs from ``count``.
    """
    if isinstance(features, torch.Tensor):
        array = features.detach().cpu().numpy()
    elif isinstance(features, np.ndarray):
        array = features
    else:
        raise ParameterError(
            f"{owner}: features must be a NumPy array or torch tensor of shape (N, D) or (N, C, H, W), got "
            f"{type(features).__name__}",
            value=type(features),
        )
    if array.ndim < 2:
        raise ParameterError(
            f"{owner}: features must have shape (N, D) or (N, C, H, W), got {array.shape}; reshape a single "
            "feature column with x.reshape(-1, 1)",
            value=array.shape,
        )
    if count is not None and array.shape[0] != count:
        raise ParameterError(f"{owner}: features have {array.shape[0]} rows but labels have {count}", value=array.shape)
    flat = np.asarray(array, dtype=np.float64).reshape(array.shape[0], -1)
    if not np.isfinite(flat).all():
        raise ParameterError(f"{owner}: features contain NaN or infinity; clean or impute them first", value="non-finite")
    return flat

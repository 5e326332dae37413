"""The model zoo: architectures by name, and the pretrained weights shipped with mlwarden."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ModelError
from .lenet import LeNet5
from .weights import load_weights, state_mismatch

__all__ = ["ARCHITECTURES", "PRETRAINED", "WEIGHTS_DIR", "build", "load_pretrained", "load_from_weights"]

WEIGHTS_DIR = Path(__file__).parent / "weights"

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "lenet5": LeNet5,
}

# Zoo name -> weights file shipped in WEIGHTS_DIR, trained by 'mlwarden train'.
PRETRAINED: dict[str, str] = {
    "lenet5": "lenet5-fashion-mnist.safetensors",
}


def build(architecture: str, **kwargs: Any) -> nn.Module:
    """Return a new, untrained model of the named architecture."""
    if architecture not in ARCHITECTURES:
        raise ModelError(
            f"unknown architecture {architecture!r}; the zoo has {', '.join(sorted(ARCHITECTURES))}",
            value=architecture,
        )
    return ARCHITECTURES[architecture](**kwargs)


def load_from_weights(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Build the architecture named in a weights file's sidecar and load the weights into it.

    Returns the model in eval mode and the sidecar.
    """
    state, sidecar = load_weights(path)
    model = build(sidecar.get("architecture", ""), **sidecar.get("architecture_kwargs", {}))
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ModelError(
            f"weights in {path} do not fit architecture {sidecar['architecture']!r}: {state_mismatch(model, state)}; "
            "the sidecar names another architecture than the one the weights were saved from",
            value=str(path),
        ) from None
    return model.eval(), sidecar


def load_pretrained(name: str = "lenet5") -> tuple[nn.Module, dict[str, Any]]:
    """Return a zoo model with its shipped weights, in eval mode, and the weights' sidecar."""
    if name not in PRETRAINED:
        raise ModelError(
            f"no pretrained weights for {name!r}; pretrained models: {', '.join(sorted(PRETRAINED))}", value=name
        )
    path = WEIGHTS_DIR / PRETRAINED[name]
    if not path.is_file():
        raise ModelError(
            f"pretrained weights {path} are missing from this installation; recreate them with "
            f"'mlwarden train --model {name} --output {path}'",
            value=str(path),
        )
    return load_from_weights(path)

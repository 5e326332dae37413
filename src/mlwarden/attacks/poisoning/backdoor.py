"""BadNets: a trigger pattern stamped on training images that are relabeled to a target class.

A model trained on the poisoned set behaves normally on clean inputs but
predicts the target class for any input that carries the trigger. The
attack's strength is its backdoor success rate: the fraction of triggered
test inputs from other classes that the model assigns to the target.

Reference: T. Gu, B. Dolan-Gavitt, S. Garg, "BadNets: Identifying
vulnerabilities in the machine learning model supply chain", 2017
(arXiv:1708.06733).

Limitations: the trigger is a fixed patch at a fixed place, the form that
spectral signatures and activation clustering were designed to find;
blended, warped or sample-specific triggers are not implemented.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..._validation import check_bounds, check_choice, check_int, owner_of
from ...errors import ParameterError
from ...threat import Frequency, Goal, Knowledge, Level, Scope, Specificity, Stage, ThreatProfile
from .base import Array, PoisoningAttack, PoisonResult, labels_to_numpy

__all__ = ["BadNetsBackdoor", "TRIGGER_PATTERNS", "TRIGGER_POSITIONS", "backdoor_success_rate"]

TRIGGER_PATTERNS = ("checkerboard", "square")
TRIGGER_POSITIONS = ("bottom-right", "bottom-left", "top-right", "top-left", "center")


class BadNetsBackdoor(PoisoningAttack):
    """Stamp a trigger patch on a fraction of the training images and relabel them as ``target_class``.

    Parameters
    ----------
    rate : float
        Fraction of the whole training set to poison, in [0, 1].
    target_class : int
        Class that triggered inputs are assigned to.
    pattern : {"checkerboard", "square"} or torch.Tensor, default "checkerboard"
        The patch: alternating high and low pixels, a solid high square, or
        a custom (C, h, w) or (h, w) tensor of pixel values within ``bounds``.
    size : int, default 3
        Side of the square patch in pixels (ignored for a custom tensor).
    position : str or (int, int), default "bottom-right"
        One of ``TRIGGER_POSITIONS``, or the (row, column) of the patch's top-left pixel.
    margin : int, default 1
        Distance in pixels between the patch and the image border for named positions.
    source_class : int, optional
        Only images of this class are poisoned; default every class but the target.
    bounds : (float, float), default (0, 1)
        Pixel range; "high" and "low" pixels of the pattern are its ends.
    seed : int, default 0

    Example
    -------
    >>> import torch
    >>> attack = BadNetsBackdoor(rate=0.1, target_class=0)
    >>> result = attack.poison(torch.rand(50, 1, 28, 28), torch.arange(50) % 10)
    >>> len(result.indices), int(result.labels[result.indices].unique())
    (5, 0)
    """

    name = "backdoor"
    profile = ThreatProfile(
        Goal.INTEGRITY, Stage.COLLECTION, Knowledge.GRAY_BOX, Frequency.ONE_SHOT, (Specificity.TARGETED,), Scope.UNIVERSAL, Level.PIXEL
    )

    def __init__(
        self,
        *,
        rate: float,
        target_class: int,
        pattern: str | torch.Tensor = "checkerboard",
        size: int = 3,
        position: str | Sequence[int] = "bottom-right",
        margin: int = 1,
        source_class: int | None = None,
        bounds: Sequence[float] = (0.0, 1.0),
        seed: int = 0,
    ) -> None:
        super().__init__(rate=rate, seed=seed)
        owner = owner_of(self)
        self.target_class = check_int(target_class, "target_class", owner, low=0)
        self.source_class = None if source_class is None else check_int(source_class, "source_class", owner, low=0)
        if self.source_class == self.target_class:
            raise ParameterError(f"{owner}: source_class and target_class are both {self.target_class}", value=self.source_class)
        self.bounds = check_bounds(tuple(bounds), owner)
        self.size = check_int(size, "size", owner, low=1)
        self.margin = check_int(margin, "margin", owner, low=0)
        self._custom: torch.Tensor | None = None
        if isinstance(pattern, torch.Tensor):
            if pattern.dim() not in (2, 3) or not pattern.is_floating_point():
                raise ParameterError(
                    f"{owner}: a custom pattern must be a float tensor of shape (C, h, w) or (h, w), got "
                    f"{pattern.dtype} {tuple(pattern.shape)}",
                    value=tuple(pattern.shape),
                )
            self._custom = pattern.detach().clone().reshape((-1, *pattern.shape[-2:]))
            self.pattern = "custom"
        else:
            self.pattern = check_choice(pattern, "pattern", owner, TRIGGER_PATTERNS)
        if isinstance(position, str):
            self.position: str | tuple[int, int] = check_choice(position, "position", owner, TRIGGER_POSITIONS)
        elif isinstance(position, Sequence) and len(position) == 2:
            self.position = (check_int(position[0], "position[0]", owner, low=0), check_int(position[1], "position[1]", owner, low=0))
        else:
            raise ParameterError(
                f"{owner}: position must be one of {', '.join(TRIGGER_POSITIONS)} or (row, column), got {position!r}",
                value=position,
            )

    # --- the trigger ------------------------------------------------------------------

    def trigger(self, channels: int) -> torch.Tensor:
        """Return the patch, float32 (channels, h, w), with pixel values within the bounds."""
        low, high = self.bounds
        if self._custom is not None:
            patch = self._custom
            if patch.shape[0] not in (1, channels):
                raise ParameterError(
                    f"{type(self).__name__}: the custom pattern has {patch.shape[0]} channels but the images have {channels}",
                    value=patch.shape[0],
                )
            return patch.expand(channels, -1, -1).to(torch.float32)
        if self.pattern == "square":
            return torch.full((channels, self.size, self.size), high)
        rows = torch.arange(self.size).view(-1, 1)
        columns = torch.arange(self.size).view(1, -1)
        board = torch.where((rows + columns) % 2 == 0, torch.tensor(high), torch.tensor(low))
        return board.expand(channels, -1, -1).to(torch.float32)

    def _origin(self, height: int, width: int, patch_height: int, patch_width: int) -> tuple[int, int]:
        if isinstance(self.position, tuple):
            row, column = self.position
        else:
            bottom, right = height - patch_height - self.margin, width - patch_width - self.margin
            origins = {
                "bottom-right": (bottom, right),
                "bottom-left": (bottom, self.margin),
                "top-right": (self.margin, right),
                "top-left": (self.margin, self.margin),
                "center": ((height - patch_height) // 2, (width - patch_width) // 2),
            }
            row, column = origins[self.position]
        if row < 0 or column < 0 or row + patch_height > height or column + patch_width > width:
            raise ParameterError(
                f"{type(self).__name__}: a {patch_height}x{patch_width} trigger at (row {row}, column {column}) does "
                f"not fit in {height}x{width} images; use a smaller size, margin or another position",
                value=self.position,
            )
        return row, column

    def apply_trigger(self, inputs: torch.Tensor) -> torch.Tensor:
        """Return a copy of the images (N, C, H, W) with the trigger stamped on every one."""
        images = _check_images(inputs, type(self).__name__)
        patch = self.trigger(images.shape[1]).to(images.dtype)
        row, column = self._origin(images.shape[2], images.shape[3], patch.shape[1], patch.shape[2])
        stamped = images.clone()
        stamped[:, :, row : row + patch.shape[1], column : column + patch.shape[2]] = patch
        return stamped.clamp(*self.bounds)

    # --- the attack -------------------------------------------------------------------

    def poison(self, inputs: Array, labels: Array) -> PoisonResult:
        """Return the set with triggered, relabeled images; ``indices`` are the poisoned images.

        NumPy inputs are accepted and returned as NumPy arrays.
        """
        total = self._check_inputs(inputs)
        images = torch.from_numpy(np.asarray(inputs)) if isinstance(inputs, np.ndarray) else inputs
        original = labels_to_numpy(labels, type(self).__name__, total)
        if self.source_class is None:
            candidates = np.flatnonzero(original != self.target_class)
            what = f"images outside class {self.target_class}"
        else:
            candidates = np.flatnonzero(original == self.source_class)
            what = f"images of class {self.source_class}"
        chosen = self._choose(candidates, total, what)
        poisoned = images.detach().clone()
        if len(chosen):
            index = torch.from_numpy(chosen)
            poisoned[index] = self.apply_trigger(images[index])
        poisoned_labels = original.copy()
        poisoned_labels[chosen] = self.target_class
        output: Array = poisoned.numpy() if isinstance(inputs, np.ndarray) else poisoned
        return self._result(output, poisoned_labels, labels, chosen, original)

    def settings(self) -> dict[str, Any]:
        settings = super().settings()
        settings["bounds"] = list(self.bounds)
        if isinstance(self.position, tuple):
            settings["position"] = list(self.position)
        return settings


def backdoor_success_rate(
    model: torch.nn.Module,
    attack: BadNetsBackdoor,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 1000,
) -> float:
    """Return the fraction of triggered inputs from other classes that the model assigns to the target class.

    Inputs whose true class is the target are left out, since predicting the
    target for them is correct behaviour and not the backdoor.
    """
    keep = labels != attack.target_class
    if attack.source_class is not None:
        keep &= labels == attack.source_class
    images = inputs[keep]
    if len(images) == 0:
        return 0.0
    was_training = model.training
    model.eval()
    hits = 0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            stamped = attack.apply_trigger(images[start : start + batch_size])
            hits += int((model(stamped).argmax(1) == attack.target_class).sum())
    model.train(was_training)
    return hits / len(images)


def _check_images(inputs: Any, owner: str) -> torch.Tensor:
    if isinstance(inputs, np.ndarray):
        inputs = torch.from_numpy(inputs)
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4 or not inputs.is_floating_point():
        raise ParameterError(
            f"{owner}: images must be a float tensor of shape (N, C, H, W), got {type(inputs).__name__} "
            f"{tuple(getattr(inputs, 'shape', ()))}",
            value=tuple(getattr(inputs, "shape", ())),
        )
    return inputs

"""Clean-label poisoning by feature collision ("Poison Frogs").

The attacker wants one target input (from class A) classified as a base
class B after the victim retrains. Poisons are images of class B, correctly
labeled, nudged in pixel space until their features collide with the
target's features. A model whose classifier is refit on these poisons draws
class B's region around the target. Each poison solves

    min_x ||f(x) - f(t)||^2 + beta * ||x - b||^2,

by forward-backward splitting: an Adam step on the feature term, then the
closed-form proximal step of the pixel term, then clipping to the bounds.
Optionally the base starts as a blend with the target ("watermarking").

Reference: A. Shafahi, W. R. Huang, M. Najibi, O. Suciu, C. Studer,
T. Dumitras, T. Goldstein, "Poison frogs! Targeted clean-label poisoning
attacks on neural networks", NeurIPS 2018.

Limitations: the attack is strong when the victim keeps the feature
extractor and refits only the last layer (transfer learning), as in the
paper. A victim trained from scratch learns other features, so the
collision mostly fails. Labels are never changed, so label-noise detectors
cannot see the poisons; feature-space outlier detectors can.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..._validation import check_bounds, check_int, check_real, owner_of
from ...defenses.poisoning.features import feature_extractor
from ...errors import ParameterError
from ...threat import Frequency, Goal, Knowledge, Scope, Specificity, Stage, ThreatProfile
from .base import Array, PoisoningAttack, PoisonResult, labels_to_numpy

__all__ = ["FeatureCollision"]

logger = logging.getLogger(__name__)


class FeatureCollision(PoisoningAttack):
    """Craft correctly labeled images of ``base_class`` whose features match the target's.

    Parameters
    ----------
    model : nn.Module
        The feature extractor the attacker has (the victim's pretrained
        network, or a surrogate). It is not changed.
    target : torch.Tensor
        The input to be misclassified, (C, H, W) or (1, C, H, W).
    base_class : int
        Class of the poisons, which the target should be classified as.
    rate : float
        Fraction of the whole training set to turn into poisons, in [0, 1];
        the poisons replace randomly chosen images of ``base_class``.
    steps : int, default 200
        Optimization steps.
    step_size : float, default 0.01
        Adam step size in pixel units.
    beta : float, default 0.1
        Weight of the pixel-distance term relative to the feature term,
        rescaled by (features / pixels) so that it does not depend on the
        image size.
    opacity : float, default 0.3
        Blend of the target into each base image before optimizing, in [0, 1).
    layer : str, optional
        Submodule whose output is the feature space; default ``model.features``.
    bounds : (float, float), default (0, 1)
    seed : int, default 0
    """

    name = "feature-collision"
    profile = ThreatProfile(
        Goal.INTEGRITY, Stage.COLLECTION, Knowledge.WHITE_BOX, Frequency.ITERATIVE, (Specificity.TARGETED,), Scope.INDIVIDUAL
    )

    def __init__(
        self,
        model: nn.Module,
        target: torch.Tensor,
        *,
        base_class: int,
        rate: float,
        steps: int = 200,
        step_size: float = 0.01,
        beta: float = 0.1,
        opacity: float = 0.3,
        layer: str | None = None,
        bounds: Sequence[float] = (0.0, 1.0),
        seed: int = 0,
    ) -> None:
        super().__init__(rate=rate, seed=seed)
        owner = owner_of(self)
        if not isinstance(model, nn.Module):
            raise ParameterError(f"{owner}: model must be a torch.nn.Module, got {type(model).__name__}", value=type(model))
        if not isinstance(target, torch.Tensor) or target.dim() not in (3, 4) or (target.dim() == 4 and len(target) != 1):
            raise ParameterError(
                f"{owner}: target must be one image, a tensor of shape (C, H, W) or (1, C, H, W), got "
                f"{tuple(getattr(target, 'shape', ()))}",
                value=tuple(getattr(target, "shape", ())),
            )
        self._model = model
        self._features = feature_extractor(model, layer)
        self._target = target.detach().reshape((1, *target.shape[-3:])).to(torch.float32)
        self.base_class = check_int(base_class, "base_class", owner, low=0)
        self.steps = check_int(steps, "steps", owner, low=1)
        self.step_size = check_real(step_size, "step_size", owner, low=0.0, low_inclusive=False)
        self.beta = check_real(beta, "beta", owner, low=0.0)
        self.opacity = check_real(opacity, "opacity", owner, low=0.0, high=1.0, high_inclusive=False)
        self.layer = layer
        self.bounds = check_bounds(tuple(bounds), owner)

    @property
    def target(self) -> torch.Tensor:
        """The target image, (1, C, H, W)."""
        return self._target

    def poison(self, inputs: Array, labels: Array) -> PoisonResult:
        """Return the set with crafted poisons in place of some ``base_class`` images; labels are unchanged."""
        total = self._check_inputs(inputs)
        images = torch.from_numpy(np.asarray(inputs)) if isinstance(inputs, np.ndarray) else inputs
        original = labels_to_numpy(labels, type(self).__name__, total)
        chosen = self._choose(np.flatnonzero(original == self.base_class), total, f"images of class {self.base_class}")
        poisoned = images.detach().clone()
        if len(chosen):
            index = torch.from_numpy(chosen)
            poisoned[index] = self.craft(images[index])
        output: Array = poisoned.numpy() if isinstance(inputs, np.ndarray) else poisoned
        return self._result(output, original.copy(), labels, chosen, original)

    def craft(self, bases: torch.Tensor) -> torch.Tensor:
        """Return one poison per base image (N, C, H, W), all optimized together."""
        low, high = self.bounds
        bases = bases.detach().to(torch.float32)
        start = (1 - self.opacity) * bases + self.opacity * self._target
        poisons = start.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([poisons], lr=self.step_size)
        was_training = self._model.training
        self._model.eval()
        try:
            with torch.no_grad():
                target_features = self._features(self._target).flatten(1)
            # beta is given per feature; scaling by features/pixels keeps its meaning across image sizes.
            beta = self.beta * target_features.shape[1] / bases[0].numel()
            for step in range(self.steps):
                distance = (self._features(poisons).flatten(1) - target_features).pow(2).sum(1)
                optimizer.zero_grad(set_to_none=True)
                distance.sum().backward()
                optimizer.step()
                with torch.no_grad():
                    # Proximal step of beta * ||x - b||^2 with step size lr.
                    rate = self.step_size * beta
                    poisons.copy_(((poisons + rate * bases) / (1 + rate)).clamp(low, high))
                if step == 0 or step == self.steps - 1:
                    logger.debug("feature collision step %d: mean feature distance %.4f", step, float(distance.detach().mean()))
        finally:
            self._model.train(was_training)
        return poisons.detach()

    def settings(self) -> dict[str, Any]:
        settings = super().settings()
        settings["bounds"] = list(self.bounds)
        return settings

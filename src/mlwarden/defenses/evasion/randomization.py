"""Randomized input transformations: random resize-and-pad, and a random-transformation wrapper.

References
----------
C. Xie, J. Wang, Z. Zhang, Z. Ren, A. Yuille, "Mitigating adversarial
effects through randomization", ICLR 2018 (random resizing and padding).
E. Raff, J. Sylvester, S. Forsyth, M. McLean, "Barrage of random transforms
for adversarially robust defense", CVPR 2019 (random choices among many
transformations).
A. Athalye, L. Engstrom, A. Ilyas, K. Kwok, "Synthesizing robust
adversarial examples", ICML 2018 (expectation over transformation, EOT).

Each call draws new random parameters for every sample, so the defended
model is a random function. Both defenses are known to fall to EOT: an
attacker who averages gradients over many draws finds perturbations that
survive most of them (Athalye, Carlini and Wagner, ICML 2018).

Randomness comes from a ``torch.Generator`` seeded by ``seed``: the same seed
and the same sequence of calls give the same outputs. NOTE: a sample's draw
depends on its position in the sequence of calls and in its batch, so a
different batching gives different (equally distributed) draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..._validation import check_int, check_real, owner_of
from ...errors import ParameterError
from ...threat import DefenseProfile, Posture, Stage
from .base import InputTransformDefense
from .squeezing import median_filter, reduce_bit_depth

__all__ = ["RandomResizePad", "RandomTransformation", "RANDOM_TRANSFORM_KINDS"]

_PROFILE = DefenseProfile(Posture.PROACTIVE, Stage.PREPROCESSING, ("evasion",))

RANDOM_TRANSFORM_KINDS = ("noise", "affine", "bit-depth", "median")


def _warp(inputs: torch.Tensor, theta: torch.Tensor, low: float) -> torch.Tensor:
    """Resample inputs by per-sample affine maps (N, 2, 3); outside pixels take the value ``low``."""
    grid = F.affine_grid(theta.to(inputs.dtype), list(inputs.shape), align_corners=False)
    return F.grid_sample(inputs - low, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + low


def _per_sample(
    inputs: torch.Tensor, settings: torch.Tensor, function: Callable[[torch.Tensor, int], torch.Tensor]
) -> torch.Tensor:
    """Apply ``function(part, setting)`` to each group of samples that drew the same integer setting."""
    result = inputs.clone()
    for setting in settings.unique().tolist():
        picked = (settings == setting).nonzero().flatten().to(inputs.device)
        result = result.index_copy(0, picked, function(inputs[picked], int(setting)))
    return result


class _RandomDefense(InputTransformDefense):
    """An input transformation with its own seeded generator."""

    randomized = True

    def __init__(self, model: nn.Module, *, seed: int = 0, bounds: Sequence[float] | None = None) -> None:
        super().__init__(model, bounds=bounds)
        self.seed = check_int(seed, "seed", type(self).__name__)
        self.generator = torch.Generator().manual_seed(self.seed)

    def reseed(self, seed: int) -> None:
        """Restart the random draws from ``seed``."""
        self.seed = check_int(seed, "seed", type(self).__name__)
        self.generator.manual_seed(self.seed)

    def transform(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.transform_pair(inputs)[0]

    def _uniform(self, count: int) -> torch.Tensor:
        return torch.rand(count, generator=self.generator)


class RandomResizePad(_RandomDefense):
    """Classify inputs shrunk to a random size and padded back at a random offset.

    Each sample is resized (bilinear) to a random side between ``min_size``
    and its own side, then placed at a random position in a canvas of the
    original size filled with the lower bound. The model gets the original
    input size, as Xie et al. do with a resize-then-pad to a fixed size.

    Known to fall to EOT: the resize is differentiable, and averaging the
    gradient over draws gives perturbations that survive the randomness
    (Athalye, Carlini and Wagner, ICML 2018).

    Parameters
    ----------
    model : nn.Module
    min_size : int, optional
        Smallest side in pixels; default 90 % of the input side, rounded down
        (Xie et al. resize 299-pixel images to at least 299 of 331, about 90 %).
    seed : int, default 0
    bounds : (low, high), optional
    """

    name = "random-resize"
    profile = _PROFILE
    differentiable = True
    known_bypass = "EOT (expectation over the random resizes)"

    def __init__(
        self, model: nn.Module, *, min_size: int | None = None, seed: int = 0, bounds: Sequence[float] | None = None
    ) -> None:
        super().__init__(model, seed=seed, bounds=bounds)
        self.min_size = None if min_size is None else check_int(min_size, "min_size", type(self).__name__, low=1)

    def transform_pair(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count, _, height, width = inputs.shape
        smallest = self.min_size if self.min_size is not None else int(0.9 * min(height, width))
        if smallest > min(height, width):
            raise ParameterError(
                f"RandomResizePad: min_size {smallest} exceeds the input side {min(height, width)}; pass a smaller "
                "min_size",
                value=smallest,
            )
        # Side lengths in whole pixels, as in Xie et al.; one side per sample, keeping the aspect ratio.
        side = smallest + (self._uniform(count) * (min(height, width) - smallest + 1)).floor().clamp_max(
            min(height, width) - smallest
        )
        scale = side / min(height, width)
        free_x = width - scale * width
        free_y = height - scale * height
        offset_x = (self._uniform(count) * (free_x + 1)).floor().clamp(max=free_x.floor())
        offset_y = (self._uniform(count) * (free_y + 1)).floor().clamp(max=free_y.floor())

        # Output pixel o (normalized to [-1, 1]) samples input (o - centre) / scale.
        centre_x = -1.0 + 2.0 * offset_x / width + scale
        centre_y = -1.0 + 2.0 * offset_y / height + scale
        theta = torch.zeros(count, 2, 3)
        theta[:, 0, 0] = 1.0 / scale
        theta[:, 1, 1] = 1.0 / scale
        theta[:, 0, 2] = -centre_x / scale
        theta[:, 1, 2] = -centre_y / scale
        warped = _warp(inputs, theta.to(inputs.device), self.bounds[0])
        return warped, warped

    def settings(self) -> dict[str, object]:
        return {"min_size": self.min_size, "seed": self.seed}


class RandomTransformation(_RandomDefense):
    """Classify inputs after a random chain of transformations, drawn per sample and per call.

    Each of ``count`` rounds applies to every sample one transformation
    chosen uniformly from ``kinds``:

    - ``noise``: uniform noise of amplitude ``noise`` times the input range;
    - ``affine``: a rotation of up to ``rotation`` degrees and a shift of up
      to ``shift`` pixels, the uncovered border filled with the lower bound;
    - ``bit-depth``: quantization to a random depth of ``min_bits`` to 8 bits;
    - ``median``: a median filter of side 2 or 3.

    Known to fall to EOT combined with BPDA: the adaptive attack averages
    gradients over draws and passes the gradient of the quantization and
    the median straight through (Athalye, Carlini and Wagner, ICML 2018).

    Parameters
    ----------
    model : nn.Module
    kinds : sequence of str, default all four
    count : int, default 2
        Transformations applied in a row.
    noise : float, default 0.05
    rotation : float, default 10.0
        Largest rotation in degrees.
    shift : float, default 2.0
        Largest shift in pixels.
    min_bits : int, default 4
    seed : int, default 0
    bounds : (low, high), optional
    """

    name = "random-transform"
    profile = _PROFILE
    known_bypass = "EOT with BPDA for the quantization and the median"

    def __init__(
        self,
        model: nn.Module,
        *,
        kinds: Sequence[str] = RANDOM_TRANSFORM_KINDS,
        count: int = 2,
        noise: float = 0.05,
        rotation: float = 10.0,
        shift: float = 2.0,
        min_bits: int = 4,
        seed: int = 0,
        bounds: Sequence[float] | None = None,
    ) -> None:
        super().__init__(model, seed=seed, bounds=bounds)
        owner = owner_of(self)
        if isinstance(kinds, str) or not isinstance(kinds, Sequence) or not kinds:
            raise ParameterError(f"{owner}: kinds must be a non-empty list drawn from {list(RANDOM_TRANSFORM_KINDS)}, got {kinds!r}", value=kinds)
        unknown = [kind for kind in kinds if kind not in RANDOM_TRANSFORM_KINDS]
        if unknown:
            raise ParameterError(
                f"{owner}: unknown transformation {unknown[0]!r}; choose from {', '.join(RANDOM_TRANSFORM_KINDS)}",
                value=unknown[0],
            )
        self.kinds = tuple(kinds)
        self.count = check_int(count, "count", owner, low=1, high=10)
        self.noise = check_real(noise, "noise", owner, low=0.0, high=1.0)
        self.rotation = check_real(rotation, "rotation", owner, low=0.0, high=180.0)
        self.shift = check_real(shift, "shift", owner, low=0.0)
        self.min_bits = check_int(min_bits, "min_bits", owner, low=1, high=8)

    def transform_pair(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        exact, approximate = inputs, inputs
        for _ in range(self.count):
            exact, approximate = self._one_round(exact, approximate)
        return exact, approximate

    def _one_round(self, exact: torch.Tensor, approximate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply one random transformation per sample to both chains, with the same draw."""
        count = exact.shape[0]
        choice = (self._uniform(count) * len(self.kinds)).floor().long().clamp_max(len(self.kinds) - 1)
        new_exact, new_approximate = exact.clone(), approximate.clone()
        for position, kind in enumerate(self.kinds):
            picked = (choice == position).nonzero().flatten()
            if len(picked) == 0:
                continue
            done_exact, done_approximate = self._transform_kind(kind, exact[picked], approximate[picked])
            new_exact = new_exact.index_copy(0, picked.to(exact.device), done_exact)
            new_approximate = new_approximate.index_copy(0, picked.to(exact.device), done_approximate)
        return new_exact, new_approximate

    def _transform_kind(self, kind: str, exact: torch.Tensor, approximate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = self.bounds
        count = exact.shape[0]
        if kind == "noise":
            noise = (torch.rand(exact.shape, generator=self.generator) * 2 - 1).to(exact) * self.noise * (high - low)
            return (exact + noise).clamp(low, high), (approximate + noise).clamp(low, high)
        if kind == "affine":
            angle = (self._uniform(count) * 2 - 1) * math.radians(self.rotation)
            shift_x = (self._uniform(count) * 2 - 1) * self.shift * 2 / exact.shape[3]
            shift_y = (self._uniform(count) * 2 - 1) * self.shift * 2 / exact.shape[2]
            theta = torch.zeros(count, 2, 3)
            theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = angle.cos(), -angle.sin(), shift_x
            theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = angle.sin(), angle.cos(), shift_y
            theta = theta.to(exact.device)
            return _warp(exact, theta, low), _warp(approximate, theta, low)
        if kind == "bit-depth":
            bits = self.min_bits + (self._uniform(count) * (9 - self.min_bits)).floor().long().clamp_max(8 - self.min_bits)
            return _per_sample(exact, bits, lambda part, depth: reduce_bit_depth(part, depth, self.bounds)), approximate
        # median: side 2 or 3 per sample
        sides = 2 + (self._uniform(count) < 0.5).long()
        return _per_sample(exact, sides, median_filter), approximate

    def settings(self) -> dict[str, object]:
        return {
            "kinds": list(self.kinds),
            "count": self.count,
            "noise": self.noise,
            "rotation": self.rotation,
            "shift": self.shift,
            "min_bits": self.min_bits,
            "seed": self.seed,
        }

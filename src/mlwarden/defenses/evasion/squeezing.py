"""Feature squeezing transformations: bit-depth reduction and median smoothing.

Reference: W. Xu, D. Evans, Y. Qi, "Feature squeezing: detecting adversarial
examples in deep neural networks", NDSS 2018.

Both squeezers map many nearby inputs to one, so small perturbations are
partly erased. Used as a preprocessing defense, both are known to fall to
BPDA: Athalye, Carlini and Wagner (ICML 2018) attack through the
straight-through estimator, and He et al. ("Adversarial example defenses:
ensembles of weak defenses are not strong", WOOT 2017) break feature
squeezing used as a detector. Their value here is as a baseline and as the
squeezers of :mod:`~mlwarden.defenses.evasion.feature_squeezing`.

Limitations: bit-depth reduction quantizes the range ``[low, high]`` of the
model's bounds, so inputs outside the bounds are clipped first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..._validation import check_bounds, check_choice, check_int, owner_of
from ...threat import DefenseProfile, Posture, Stage
from .base import InputTransformDefense

__all__ = ["BitDepthReduction", "MedianSmoothing", "reduce_bit_depth", "median_filter", "box_filter"]

_PROFILE = DefenseProfile(Posture.PROACTIVE, Stage.PREPROCESSING, ("evasion",))


def reduce_bit_depth(inputs: torch.Tensor, bits: int, bounds: Sequence[float] = (0.0, 1.0)) -> torch.Tensor:
    """Quantize inputs to ``2**bits`` evenly spaced levels spanning ``bounds``.

    The lowest level is ``bounds[0]`` and the highest ``bounds[1]``, whatever
    the lower bound is: inputs are shifted to start at 0 before rounding and
    shifted back afterwards.
    """
    low, high = check_bounds(tuple(bounds), "reduce_bit_depth")
    bits = check_int(bits, "bits", "reduce_bit_depth", low=1, high=16)
    levels = 2**bits - 1
    scaled = (inputs.clamp(low, high) - low) / (high - low)
    return low + torch.round(scaled * levels) / levels * (high - low)


def _window_patches(inputs: torch.Tensor, size: int) -> torch.Tensor:
    """Return every ``size`` x ``size`` window of each channel, shape (N, C, H, W, size * size).

    Borders are mirrored (torch's ``reflect`` padding, scipy's ``mirror``).
    For an even size the window covers ``size // 2`` pixels before the
    centre pixel and ``size // 2 - 1`` after it, as scipy.ndimage does.
    """
    before, after = size // 2, (size - 1) // 2
    padded = F.pad(inputs, (before, after, before, after), mode="reflect")
    windows = padded.unfold(2, size, 1).unfold(3, size, 1)
    return windows.reshape(*inputs.shape, size * size)


def median_filter(inputs: torch.Tensor, size: int) -> torch.Tensor:
    """Return the per-channel median over ``size`` x ``size`` windows of an NCHW batch.

    For an even window the upper of the two middle values is returned, as
    ``scipy.ndimage.median_filter`` does.
    """
    size = check_int(size, "size", "median_filter", low=1)
    if size == 1:
        return inputs
    patches = _window_patches(inputs, size)
    return patches.kthvalue(size * size // 2 + 1, dim=-1).values


def box_filter(inputs: torch.Tensor, size: int) -> torch.Tensor:
    """Return the per-channel mean over the same windows as :func:`median_filter`."""
    if size == 1:
        return inputs
    return _window_patches(inputs, size).mean(dim=-1)


class BitDepthReduction(InputTransformDefense):
    """Classify inputs quantized to ``bits`` bits per channel value.

    Known to fall to BPDA with the straight-through estimator. Rounding has a
    zero gradient almost everywhere, so gradient attacks that differentiate
    through it get nothing. The identity is a good approximation of the
    rounding for computing gradients (Athalye et al., ICML 2018).

    Parameters
    ----------
    model : nn.Module
        Classifier of inputs in ``bounds``.
    bits : int, default 4
        Bits per value, 1 to 16; 8 keeps 8-bit images unchanged.
    bounds : (low, high), optional
        Input range; default the model's ``bounds`` or (0, 1). The lowest and
        highest levels are exactly ``low`` and ``high``.

    Examples
    --------
    >>> import torch
    >>> from mlwarden.models import LeNet5
    >>> defense = BitDepthReduction(LeNet5(), bits=1, bounds=(-1.0, 1.0))
    >>> defense.transform(torch.tensor([[[[-0.9, -0.1, 0.1, 0.9]]]])).flatten().tolist()
    [-1.0, -1.0, 1.0, 1.0]
    """

    name = "bit-depth"
    profile = _PROFILE
    known_bypass = "BPDA with the straight-through estimator"

    def __init__(self, model: nn.Module, *, bits: int = 4, bounds: Sequence[float] | None = None) -> None:
        super().__init__(model, bounds=bounds)
        self.bits = check_int(bits, "bits", type(self).__name__, low=1, high=16)

    def transform(self, inputs: torch.Tensor) -> torch.Tensor:
        return reduce_bit_depth(inputs, self.bits, self.bounds)

    def settings(self) -> dict[str, object]:
        return {"bits": self.bits}


class MedianSmoothing(InputTransformDefense):
    """Classify inputs after a per-channel median filter.

    Known to fall to the plain white-box attack: autograd passes the gradient
    through the median to one pixel per window, and on the shipped LeNet that
    sparse gradient already brings BIM about as far as BPDA does. The adaptive
    evaluation therefore keeps the worse of the two, with the identity or a
    mean filter as the backward pass of BPDA.

    Parameters
    ----------
    model : nn.Module
    size : int, default 2
        Window side in pixels (2 is the setting of Xu et al. for 28x28 images).
    approximation : {"identity", "mean"}, default "identity"
        Backward pass of BPDA: the straight-through estimator, or the mean
        over the same window.
    bounds : (low, high), optional
    """

    name = "median"
    profile = _PROFILE
    known_bypass = "the white-box attack through autograd, and BPDA (identity or mean filter as the backward pass)"

    def __init__(
        self, model: nn.Module, *, size: int = 2, approximation: str = "identity", bounds: Sequence[float] | None = None
    ) -> None:
        super().__init__(model, bounds=bounds)
        owner = owner_of(self)
        self.size = check_int(size, "size", owner, low=1, high=15)
        self.approximation_kind = check_choice(approximation, "approximation", owner, ("identity", "mean"))

    def transform(self, inputs: torch.Tensor) -> torch.Tensor:
        return median_filter(inputs, self.size)

    def approximation(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs if self.approximation_kind == "identity" else box_filter(inputs, self.size)

    def settings(self) -> dict[str, object]:
        return {"size": self.size, "approximation": self.approximation_kind}

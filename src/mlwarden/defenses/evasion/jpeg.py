"""JPEG-style compression in torch, as a preprocessing defense.

References
----------
G. K. Wallace, "The JPEG still picture compression standard", IEEE
Transactions on Consumer Electronics, 1992 (block DCT, quantization tables,
quality scaling of the Independent JPEG Group).
N. Das et al., "Keeping the bad guys out: protecting and vaccinating deep
learning with JPEG compression", arXiv:1705.02900, 2017 (JPEG as a defense).
R. Shin, D. Song, "JPEG-resistant adversarial images", NIPS workshop on
machine learning and computer security, 2017 (the cubic approximation of
rounding used for BPDA).

The lossy steps of a JPEG codec are run on tensors, batched, so no image
codec is needed: colour conversion to YCbCr (three-channel inputs), 8x8 block
DCT, quantization by the standard tables scaled by ``quality``, and rounding
of the decoded pixels to 8 bits. Limitations: no chroma subsampling (4:4:4)
and no entropy coding, which is lossless and changes nothing; images whose
sides are not multiples of 8 are padded by edge replication, then cropped.
Inputs with neither 1 nor 3 channels are compressed channel by channel as
luminance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..._validation import check_bounds, check_choice, check_int, owner_of
from ...threat import DefenseProfile, Posture, Stage
from .base import InputTransformDefense

__all__ = ["JpegCompression", "jpeg_compress", "quantization_table"]

_BLOCK = 8

# Quantization tables of the JPEG standard (Annex K), for quality 50.
_LUMINANCE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_CHROMINANCE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
)

# JFIF colour conversion (ITU-R BT.601, full range).
_RGB_TO_YCBCR = (
    (0.299, 0.587, 0.114),
    (-0.168736, -0.331264, 0.5),
    (0.5, -0.418688, -0.081312),
)
_YCBCR_OFFSET = (0.0, 128.0, 128.0)


def quantization_table(quality: int, chrominance: bool = False) -> torch.Tensor:
    """Return the 8x8 quantization table for ``quality`` in [1, 100], scaled as libjpeg does."""
    quality = check_int(quality, "quality", "quantization_table", low=1, high=100)
    base = torch.tensor(_CHROMINANCE if chrominance else _LUMINANCE, dtype=torch.float64)
    scale = 5000.0 / quality if quality < 50 else 200.0 - 2.0 * quality
    return torch.floor((base * scale + 50.0) / 100.0).clamp(1.0, 255.0).to(torch.float32)


def _dct_matrix() -> torch.Tensor:
    """Return the orthonormal 8-point DCT-II matrix: ``coefficients = D @ block @ D.T``."""
    index = torch.arange(_BLOCK, dtype=torch.float64)
    matrix = torch.cos(math.pi * (2 * index[None, :] + 1) * index[:, None] / (2 * _BLOCK))
    matrix[0] *= 1 / math.sqrt(2)
    return (matrix * math.sqrt(2 / _BLOCK)).to(torch.float32)


def _exact_round(values: torch.Tensor) -> torch.Tensor:
    return torch.round(values)


def _cubic_round(values: torch.Tensor) -> torch.Tensor:
    """Rounding with a non-zero gradient: ``round(x) + (x - round(x))**3`` (Shin and Song, 2017)."""
    rounded = torch.round(values).detach()
    return rounded + (values - rounded) ** 3


def jpeg_compress(
    inputs: torch.Tensor,
    quality: int = 75,
    bounds: Sequence[float] = (0.0, 1.0),
    *,
    rounding: str = "exact",
) -> torch.Tensor:
    """Return an NCHW batch after a JPEG encode and decode at ``quality``.

    Parameters
    ----------
    inputs : torch.Tensor
        float (N, C, H, W) in ``bounds``; three channels are read as RGB.
    quality : int, default 75
        JPEG quality, 1 (strongest compression) to 100.
    bounds : (low, high)
        Range of the inputs; it maps to the 8-bit range 0 to 255.
    rounding : {"exact", "cubic"}
        ``cubic`` replaces every rounding by a differentiable approximation,
        for the backward pass of BPDA.
    """
    low, high = check_bounds(tuple(bounds), "jpeg_compress")
    round_ = _cubic_round if check_choice(rounding, "rounding", "jpeg_compress", ("exact", "cubic")) == "cubic" else _exact_round
    count, channels, height, width = inputs.shape
    pixels = (inputs.clamp(low, high) - low) / (high - low) * 255.0
    is_colour = channels == 3
    if is_colour:
        pixels = _colour_convert(pixels, torch.tensor(_RGB_TO_YCBCR), torch.tensor(_YCBCR_OFFSET), inverse=False)

    # Pad to whole blocks, cut into 8x8 blocks: (N, C, rows, cols, 8, 8).
    pad_bottom, pad_right = (-height) % _BLOCK, (-width) % _BLOCK
    if pad_bottom or pad_right:
        pixels = F.pad(pixels, (0, pad_right, 0, pad_bottom), mode="replicate")
    blocks = pixels.unfold(2, _BLOCK, _BLOCK).unfold(3, _BLOCK, _BLOCK) - 128.0

    dct = _dct_matrix().to(inputs.device, inputs.dtype)
    coefficients = dct @ blocks @ dct.T
    tables = _channel_tables(channels, quality, is_colour).to(inputs.device, inputs.dtype)
    quantized = round_(coefficients / tables) * tables
    decoded = dct.T @ quantized @ dct + 128.0

    # Reassemble the blocks and crop the padding.
    rows, cols = decoded.shape[2], decoded.shape[3]
    decoded = decoded.permute(0, 1, 2, 4, 3, 5).reshape(count, channels, rows * _BLOCK, cols * _BLOCK)
    decoded = decoded[:, :, :height, :width]
    if is_colour:
        decoded = _colour_convert(decoded, torch.tensor(_RGB_TO_YCBCR), torch.tensor(_YCBCR_OFFSET), inverse=True)
    decoded = round_(decoded.clamp(0.0, 255.0))
    return low + decoded / 255.0 * (high - low)


def _channel_tables(channels: int, quality: int, is_colour: bool) -> torch.Tensor:
    """Return the table of each channel, shape (1, C, 1, 1, 8, 8)."""
    luminance = quantization_table(quality)
    if is_colour:
        chrominance = quantization_table(quality, chrominance=True)
        stacked = torch.stack([luminance, chrominance, chrominance])
    else:
        stacked = luminance.expand(channels, _BLOCK, _BLOCK)
    return stacked[None, :, None, None]


def _colour_convert(pixels: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor, *, inverse: bool) -> torch.Tensor:
    matrix = matrix.to(pixels.device, pixels.dtype)
    offset = offset.to(pixels.device, pixels.dtype).view(1, 3, 1, 1)
    if inverse:
        return torch.einsum("ij,njhw->nihw", torch.linalg.inv(matrix), pixels - offset)
    return torch.einsum("ij,njhw->nihw", matrix, pixels) + offset


class JpegCompression(InputTransformDefense):
    """Classify inputs after JPEG-style compression at a fixed quality.

    Known to fall to BPDA: the roundings have a zero gradient, but the
    straight-through estimator (or the cubic rounding of Shin and Song) gives
    the attacker a good gradient, and compression removes little of a
    perturbation made with it (Athalye et al., ICML 2018).

    Parameters
    ----------
    model : nn.Module
    quality : int, default 75
        JPEG quality in [1, 100]; lower removes more.
    approximation : {"identity", "cubic"}, default "identity"
        Backward pass of BPDA: the straight-through estimator, or this same
        compression with the cubic approximation of every rounding.
    bounds : (low, high), optional
    """

    name = "jpeg"
    profile = DefenseProfile(Posture.PROACTIVE, Stage.PREPROCESSING, ("evasion",))
    known_bypass = "BPDA with the straight-through estimator or a differentiable JPEG"

    def __init__(
        self, model: nn.Module, *, quality: int = 75, approximation: str = "identity", bounds: Sequence[float] | None = None
    ) -> None:
        super().__init__(model, bounds=bounds)
        owner = owner_of(self)
        self.quality = check_int(quality, "quality", owner, low=1, high=100)
        self.approximation_kind = check_choice(approximation, "approximation", owner, ("identity", "cubic"))

    def transform(self, inputs: torch.Tensor) -> torch.Tensor:
        return jpeg_compress(inputs, self.quality, self.bounds)

    def approximation(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.approximation_kind == "identity":
            return inputs
        return jpeg_compress(inputs, self.quality, self.bounds, rounding="cubic")

    def settings(self) -> dict[str, object]:
        return {"quality": self.quality, "approximation": self.approximation_kind}

"""Square windows at a different position in each image, built without a loop over samples.

The Square attack changes one square window per step and the adversarial
patch pastes a square patch; both place a square at per-sample positions.
"""

from __future__ import annotations

import torch

__all__ = ["window_mask", "place_pattern", "random_corners"]


def window_mask(rows: torch.Tensor, cols: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """Return a bool mask (N, 1, height, width) that is True inside each sample's window.

    ``rows`` and ``cols`` (N,) are the top-left corners; the window spans
    ``size`` pixels down and right of them.
    """
    inside_rows = _inside(rows, size, height)
    inside_cols = _inside(cols, size, width)
    return (inside_rows[:, :, None] & inside_cols[:, None, :])[:, None]


def place_pattern(
    pattern: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(placed, mask)``: each sample's pattern at its corner on an empty canvas.

    Parameters
    ----------
    pattern : torch.Tensor
        (N, C, size, size) one pattern per sample, or (C, size, size) shared.
    rows, cols : torch.Tensor
        int64 (N,) top-left corners, with ``rows + size <= height`` and
        ``cols + size <= width``.

    Returns
    -------
    placed : torch.Tensor
        (N, C, height, width), zero outside the windows.
    mask : torch.Tensor
        bool (N, 1, height, width), True inside the windows.
    """
    size = pattern.shape[-1]
    count = rows.shape[0]
    if pattern.dim() == 3:
        pattern = pattern.expand(count, *pattern.shape)
    # Offset of every canvas pixel from the corner, clamped into the pattern; the mask drops the clamped ones.
    offset_rows = (torch.arange(height)[None, :] - rows[:, None]).clamp(0, size - 1)
    offset_cols = (torch.arange(width)[None, :] - cols[:, None]).clamp(0, size - 1)
    channels = pattern.shape[1]
    gathered_rows = pattern.gather(2, offset_rows[:, None, :, None].expand(count, channels, height, size))
    placed = gathered_rows.gather(3, offset_cols[:, None, None, :].expand(count, channels, height, width))
    mask = window_mask(rows, cols, size, height, width)
    return placed * mask, mask


def random_corners(uniform: torch.Tensor, size: int, extent: int) -> torch.Tensor:
    """Map uniform values in [0, 1) to corners in ``[0, extent - size]``, int64."""
    return (uniform * (extent - size + 1)).floor().clamp(0, extent - size).to(torch.int64)


def _inside(corners: torch.Tensor, size: int, extent: int) -> torch.Tensor:
    positions = torch.arange(extent)[None, :]
    return (positions >= corners[:, None]) & (positions < corners[:, None] + size)

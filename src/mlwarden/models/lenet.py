"""LeNet-5 for 28×28 single-channel images.

Reference: Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, "Gradient-based learning
applied to document recognition", Proceedings of the IEEE, 1998.

This version keeps the original layer sizes (6 and 16 feature maps of 5×5
convolutions, then 120, 84 and 10 units) with the modern choices of ReLU
and max pooling. The first convolution pads by 2 so that 28×28 inputs give
the 32×32 geometry of the original.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import Normalize

__all__ = ["LeNet5"]


class LeNet5(nn.Module):
    """LeNet-5 with input normalization as its first layer.

    Parameters
    ----------
    num_classes : int, default 10
    mean, std : sequence of float
        Per-channel statistics of the training images in pixel space; the
        defaults are those of the Fashion-MNIST training set.

    The model takes float32 images of shape (N, 1, 28, 28) in ``[0, 1]`` and
    returns logits of shape (N, num_classes). :meth:`features` returns the
    84-unit penultimate layer, which detectors use.
    """

    bounds = (0.0, 1.0)

    def __init__(
        self, num_classes: int = 10, mean: Sequence[float] = (0.2860,), std: Sequence[float] = (0.3530,)
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.conv = nn.Sequential(
            nn.Conv2d(1, 6, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.hidden = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(84, num_classes)

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Return the penultimate activations, shape (N, 84)."""
        return self.hidden(self.conv(self.normalize(inputs)))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(inputs))

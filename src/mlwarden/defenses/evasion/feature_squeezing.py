"""Feature-squeezing detector: flag inputs whose prediction changes when they are squeezed.

Reference: W. Xu, D. Evans, Y. Qi, "Feature squeezing: detecting adversarial
examples in deep neural networks", NDSS 2018.

The score of an input is the largest L1 distance between the model's softmax
output on the input and on each squeezed version (reduced bit depth, median
smoothing). Clean inputs barely move; adversarial perturbations tuned to the
unsqueezed model often do.

Known to fall to an adaptive attack that minimizes the classification loss
and the detector score together, with the squeezers' gradients passed
straight through (He, Wei, Chen, Carlini, Song, "Adversarial example
defenses: ensembles of weak defenses are not strong", USENIX WOOT 2017).
"""

from __future__ import annotations

import torch
from torch import nn

from ..._validation import check_int, owner_of
from ...errors import ParameterError
from ...threat import DefenseProfile, Posture, Stage
from .base import AdversarialDetector, check_images, straight_through
from .squeezing import median_filter, reduce_bit_depth

__all__ = ["FeatureSqueezingDetector"]


class FeatureSqueezingDetector(AdversarialDetector):
    """Score inputs by how much squeezing changes the model's softmax output.

    Known to fall to an attack that minimizes the classification margin and
    the squeezing score together, passing the squeezers' gradients straight
    through (:func:`~mlwarden.defenses.evasion.adaptive.detector_aware_attack`).

    Parameters
    ----------
    model : nn.Module
    bits : int or None, default 4
        Bit depth of the first squeezer; None leaves it out.
    median_size : int or None, default 2
        Window side of the median squeezer; None leaves it out.
    fpr : float, default 0.05
        Target false-positive rate on clean data.
    batch_size : int, default 1000

    Notes
    -----
    Fitting only calibrates the threshold: the squeezers have no learned
    parameters, so ``fit`` uses all of its inputs for calibration and
    ignores labels. Xu et al. use 1 bit for MNIST digits; Fashion-MNIST
    images lose their texture at 1 bit, hence the default of 4.
    """

    name = "squeeze-detector"
    profile = DefenseProfile(Posture.REACTIVE, Stage.INFERENCE, ("evasion",))
    known_bypass = "joint attack on the classification loss and the squeezing score, with BPDA through the squeezers"

    def __init__(
        self,
        model: nn.Module,
        *,
        bits: int | None = 4,
        median_size: int | None = 2,
        fpr: float = 0.05,
        batch_size: int = 1000,
    ) -> None:
        super().__init__(model, fpr=fpr, batch_size=batch_size)
        owner = owner_of(self)
        self.bits = None if bits is None else check_int(bits, "bits", owner, low=1, high=16)
        self.median_size = None if median_size is None else check_int(median_size, "median_size", owner, low=2, high=15)
        if self.bits is None and self.median_size is None:
            raise ParameterError(f"{owner}: bits and median_size are both None; keep at least one squeezer", value=None)

    def fit(self, inputs: torch.Tensor, labels: torch.Tensor | None = None) -> FeatureSqueezingDetector:
        """Set the threshold from clean ``inputs`` (labels are ignored); return ``self``."""
        check_images(inputs, type(self).__name__)
        return self.calibrate(inputs)  # type: ignore[return-value]

    def _squeezed(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        """Return each squeezed version, with the gradient of the identity (straight-through)."""
        versions = []
        if self.bits is not None:
            versions.append(straight_through(reduce_bit_depth(inputs, self.bits, self.bounds), inputs))
        if self.median_size is not None:
            versions.append(straight_through(median_filter(inputs, self.median_size), inputs))
        return versions

    def differentiable_score(self, inputs: torch.Tensor) -> torch.Tensor:
        probabilities = torch.softmax(self.model(inputs), dim=1)
        distances = [
            (probabilities - torch.softmax(self.model(squeezed), dim=1)).abs().sum(dim=1)
            for squeezed in self._squeezed(inputs)
        ]
        return torch.stack(distances).amax(dim=0)

    def settings(self) -> dict[str, object]:
        return {"bits": self.bits, "median_size": self.median_size, "fpr": self.fpr}


"""Mahalanobis-distance detector on hidden features.

Reference: K. Lee, K. Lee, H. Lee, J. Shin, "A simple unified framework for
detecting out-of-distribution samples and adversarial attacks", NeurIPS 2018.

Class-conditional Gaussians with a shared covariance are fitted to the
features of clean training inputs. The score of an input is its smallest
Mahalanobis distance to a class mean. Adversarial inputs that cross a class
boundary with a small perturbation often land in low-density regions of
feature space.

Known to fall to an adaptive attack that also descends the distance to the
nearest class mean, which the detector makes differentiable (Carlini and
Wagner, "Adversarial examples are not easily detected: bypassing ten
detection methods", AISec 2017, show this for density-based detectors).

Limitations: one feature layer only, and neither the input preprocessing
nor the layer ensemble of Lee et al.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from ..._validation import check_int, check_real, owner_of
from ...errors import ParameterError
from ...threat import DefenseProfile, Posture, Stage
from .base import AdversarialDetector, check_images

__all__ = ["MahalanobisDetector"]

logger = logging.getLogger(__name__)


class MahalanobisDetector(AdversarialDetector):
    """Score inputs by the Mahalanobis distance of their features to the nearest class mean.

    Known to fall to an attack that descends the classification margin and
    the distance together
    (:func:`~mlwarden.defenses.evasion.adaptive.detector_aware_attack`).

    Parameters
    ----------
    model : nn.Module
    layer : str, optional
        Name of the submodule (as in ``model.named_modules()``) whose output
        is the feature vector; default the model's ``features(x)`` method,
        as LeNet5 has.
    fpr : float, default 0.05
        Target false-positive rate on clean data.
    calibration_fraction : float, default 0.2
        Share of the ``fit`` inputs held out from the Gaussians to set the
        threshold, in (0, 1).
    ridge : float, default 1e-3
        Added to the covariance diagonal, relative to the mean variance, so
        that dead features do not make it singular.
    seed : int, default 0
        Seed of the split between fitting and calibration inputs.
    batch_size : int, default 1000

    Attributes
    ----------
    means_ : torch.Tensor
        (classes, features) class means.
    precision_ : torch.Tensor
        (features, features) inverse of the shared covariance.
    """

    name = "mahalanobis"
    profile = DefenseProfile(Posture.REACTIVE, Stage.INFERENCE, ("evasion",))
    known_bypass = "joint attack on the classification loss and the Mahalanobis distance"

    def __init__(
        self,
        model: nn.Module,
        *,
        layer: str | None = None,
        fpr: float = 0.05,
        calibration_fraction: float = 0.2,
        ridge: float = 1e-3,
        seed: int = 0,
        batch_size: int = 1000,
    ) -> None:
        super().__init__(model, fpr=fpr, batch_size=batch_size)
        owner = owner_of(self)
        self.calibration_fraction = check_real(
            calibration_fraction, "calibration_fraction", owner, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False
        )
        self.ridge = check_real(ridge, "ridge", owner, low=0.0)
        self.seed = check_int(seed, "seed", owner)
        self.layer = layer
        self._extract = self._feature_extractor(model, layer)
        self.means_: torch.Tensor | None = None
        self.precision_: torch.Tensor | None = None

    @staticmethod
    def _feature_extractor(model: nn.Module, layer: str | None) -> Callable[[torch.Tensor], torch.Tensor]:
        owner = "MahalanobisDetector"
        if layer is None:
            features = getattr(model, "features", None)
            if not callable(features):
                raise ParameterError(
                    f"{owner}: {type(model).__name__} has no features(x) method; pass layer=NAME, one of the "
                    "names in model.named_modules()",
                    value=type(model).__name__,
                )
            return lambda inputs: features(inputs).flatten(1)
        modules = dict(model.named_modules())
        if layer not in modules or not layer:
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
            return captured[-1].flatten(1)

        return extract

    def fit(self, inputs: torch.Tensor, labels: torch.Tensor | None = None) -> MahalanobisDetector:
        """Fit class means and the shared covariance on clean inputs, then set the threshold.

        A random share ``calibration_fraction`` of the inputs (from ``seed``)
        is held out from the Gaussians and sets the threshold. Returns ``self``.

        Raises
        ------
        ParameterError
            Labels are missing or do not match the inputs, or a class has
            no fitting sample.
        """
        owner = owner_of(self)
        check_images(inputs, owner)
        if not isinstance(labels, torch.Tensor) or labels.shape != (inputs.shape[0],):
            raise ParameterError(
                f"{owner}: fit needs int64 labels of shape ({inputs.shape[0]},), one per input; got "
                f"{tuple(getattr(labels, 'shape', ())) if labels is not None else None}",
                value=labels,
            )
        order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(self.seed))
        held_out = max(1, int(round(self.calibration_fraction * len(inputs))))
        if held_out >= len(inputs):
            raise ParameterError(f"{owner}: fit needs more than {held_out} inputs to fit and calibrate", value=len(inputs))
        fitting, calibration = order[held_out:], order[:held_out]

        features = self._features(inputs[fitting]).to(torch.float64)
        fit_labels = labels[fitting]
        classes = int(labels.max()) + 1
        means = torch.zeros(classes, features.shape[1], dtype=torch.float64)
        for label in range(classes):
            members = features[fit_labels == label]
            if len(members) == 0:
                raise ParameterError(
                    f"{owner}: class {label} has no fitting input; fit on a sample that covers every class", value=label
                )
            means[label] = members.mean(dim=0)
        centred = features - means[fit_labels]
        covariance = centred.T @ centred / len(features)
        ridge = self.ridge * float(covariance.diagonal().mean()) + 1e-12
        precision = torch.linalg.inv(covariance + ridge * torch.eye(covariance.shape[0], dtype=torch.float64))
        self.means_ = means.to(torch.float32)
        self.precision_ = precision.to(torch.float32)
        logger.info("%s: fitted %d classes on %d inputs of %d features", owner, classes, len(features), features.shape[1])
        return self.calibrate(inputs[calibration])  # type: ignore[return-value]

    @torch.no_grad()
    def _features(self, inputs: torch.Tensor) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            parts = [self._extract(inputs[start : start + self.batch_size]) for start in range(0, len(inputs), self.batch_size)]
        finally:
            self.model.train(was_training)
        return torch.cat(parts)

    def differentiable_score(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.means_ is None or self.precision_ is None:
            raise ParameterError(f"{type(self).__name__} is not fitted; call fit(clean_inputs, labels) first", value=None)
        features = self._extract(inputs)
        differences = features[:, None, :] - self.means_[None, :, :]
        distances = torch.einsum("nkd,de,nke->nk", differences, self.precision_, differences)
        return distances.amin(dim=1)

    def settings(self) -> dict[str, object]:
        return {"layer": self.layer, "fpr": self.fpr, "calibration_fraction": self.calibration_fraction, "seed": self.seed}

"""Base classes of evasion defenses: model wrappers that transform inputs, and detectors.

Two shapes cover every defense of this package:

- :class:`InputTransformDefense` is an ``nn.Module`` that classifies a
  transformed input, ``model(transform(x))``. Attacks target it directly.
  Its :meth:`~InputTransformDefense.forward_bpda` gives the same outputs, but
  its gradient flows through a differentiable approximation of the
  transformation (BPDA), which is how an adaptive attacker gets past a
  rounding or a median.
- :class:`AdversarialDetector` follows scikit-learn's outlier detectors:
  ``fit`` on clean data, ``score_samples``, ``predict``, with the threshold
  set from a target false-positive rate on clean data held out from fitting.

Reference for BPDA: A. Athalye, N. Carlini, D. Wagner, "Obfuscated gradients
give a false sense of security: circumventing defenses to adversarial
examples", ICML 2018.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from ..._validation import check_int, check_real, owner_of
from ...attacks.base import model_bounds
from ...errors import ParameterError
from ...threat import DefenseProfile

__all__ = ["InputTransformDefense", "AdversarialDetector", "straight_through", "piecewise_constant", "check_images"]

logger = logging.getLogger(__name__)


def straight_through(exact: torch.Tensor, approximation: torch.Tensor) -> torch.Tensor:
    """Return a tensor with the value of ``exact`` and the gradient of ``approximation``."""
    return approximation + (exact - approximation).detach()


def piecewise_constant(values: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Return ``values`` attached to the graph of ``inputs`` with a zero gradient.

    A vote or a rounding is piecewise constant, so its true gradient is zero
    almost everywhere. Attaching it keeps autograd working for attacks that
    differentiate the defense naively, and they get the zero gradient that
    any implementation of the same function gives.
    """
    if not inputs.requires_grad:
        return values
    return values + 0.0 * inputs.flatten(1).sum(dim=1, keepdim=True)


def check_images(inputs: torch.Tensor, owner: str) -> None:
    """Raise ParameterError unless ``inputs`` is a floating-point NCHW batch."""
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point() or inputs.dim() != 4:
        raise ParameterError(
            f"{owner}: inputs must be a floating-point tensor of shape (N, C, H, W), got "
            f"{type(inputs).__name__} {getattr(inputs, 'dtype', '')} {tuple(getattr(inputs, 'shape', ()))}",
            value=type(inputs),
        )


class InputTransformDefense(nn.Module):
    """A classifier that transforms its input before the wrapped model sees it.

    Subclasses implement :meth:`transform`. A subclass whose transformation
    has no useful gradient (rounding, a median, a vote) also overrides
    :meth:`approximation` (the identity by default, which makes BPDA the
    straight-through estimator). A randomized subclass sets ``randomized``
    and overrides :meth:`transform_pair`, so that the exact transformation and
    its approximation use the same random draw.

    Class attributes
    ----------------
    name : str
        Name used by ``--defense`` and in reports.
    profile : DefenseProfile
        Taxonomy tags.
    randomized : bool
        Whether two calls on the same input may differ, so that adaptive
        attacks must average over the randomness (EOT).
    differentiable : bool
        Whether autograd through :meth:`transform` already gives a useful
        gradient; if so, BPDA is not needed.
    known_bypass : str
        The adaptive attack this defense is known to fall to, as reported.
    """

    name: ClassVar[str] = "transform"
    profile: ClassVar[DefenseProfile]
    randomized: ClassVar[bool] = False
    differentiable: ClassVar[bool] = False
    known_bypass: ClassVar[str] = "BPDA"

    def __init__(self, model: nn.Module, *, bounds: Sequence[float] | None = None) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ParameterError(
                f"{type(self).__name__}: model must be a torch.nn.Module, got {type(model).__name__}",
                value=type(model),
            )
        self.model = model
        self.bounds = model_bounds(model, bounds)

    def transform(self, inputs: torch.Tensor) -> torch.Tensor:
        """Return the transformed inputs, in the same shape and bounds."""
        raise NotImplementedError

    def approximation(self, inputs: torch.Tensor) -> torch.Tensor:
        """Return a differentiable approximation of :meth:`transform`, used only for gradients."""
        return inputs

    def transform_pair(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(exact, approximation)`` of the transformation, from one random draw."""
        return self.transform(inputs), self.approximation(inputs)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(self.transform(inputs))

    def forward_bpda(self, inputs: torch.Tensor) -> torch.Tensor:
        """Return the same logits as :meth:`forward`, differentiated through the approximation."""
        if self.differentiable:
            return self.forward(inputs)
        exact, approximate = self.transform_pair(inputs)
        return self.model(straight_through(exact, approximate))

    def settings(self) -> dict[str, object]:
        """Return the defense's settings, as stored in ``results.json``."""
        return {}

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in self.settings().items())


class AdversarialDetector:
    """A detector of adversarial inputs with scikit-learn's outlier-detector interface.

    Scores follow the opposite sign of scikit-learn's ``score_samples``:
    higher means more likely adversarial. :meth:`predict` returns a bool
    tensor, True for inputs flagged as adversarial.

    Parameters
    ----------
    model : nn.Module
        The classifier being protected. The detector never changes its predictions.
    fpr : float, default 0.05
        Target false-positive rate on clean data, in (0, 1). The threshold is
        the ``1 - fpr`` quantile of the scores of clean calibration inputs.

    Attributes
    ----------
    threshold_ : float
        Inputs scoring above it are flagged. Set by :meth:`fit` or :meth:`calibrate`.
    score_scale_ : float
        Standard deviation of the clean calibration scores, the unit in which
        adaptive attacks measure how far an input is from being flagged.
    """

    name: ClassVar[str] = "detector"
    profile: ClassVar[DefenseProfile]
    known_bypass: ClassVar[str] = "an attack on the classifier and the detector score together"

    def __init__(self, model: nn.Module, *, fpr: float = 0.05, batch_size: int = 1000) -> None:
        owner = owner_of(self)
        if not isinstance(model, nn.Module):
            raise ParameterError(f"{owner}: model must be a torch.nn.Module, got {type(model).__name__}", value=type(model))
        self.model = model
        self.fpr = check_real(fpr, "fpr", owner, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
        self.batch_size = check_int(batch_size, "batch_size", owner, low=1)
        self.bounds = model_bounds(model)
        self.threshold_: float | None = None
        self.score_scale_: float | None = None

    # --- for subclasses -------------------------------------------------------------

    def differentiable_score(self, inputs: torch.Tensor) -> torch.Tensor:
        """Return the score (N,) with a graph, so that adaptive attacks can descend it."""
        raise NotImplementedError

    # --- scikit-learn interface -----------------------------------------------------

    def fit(self, inputs: torch.Tensor, labels: torch.Tensor | None = None) -> AdversarialDetector:
        """Fit the detector on clean inputs and set the threshold; return ``self``."""
        raise NotImplementedError

    def calibrate(self, inputs: torch.Tensor) -> AdversarialDetector:
        """Set ``threshold_`` so that a fraction ``fpr`` of these clean inputs is flagged; return ``self``.

        Use inputs that the detector was not fitted on: scores of fitting data
        are optimistic, so their threshold gives a higher false-positive rate
        on new data.
        """
        check_images(inputs, type(self).__name__)
        scores = self._raw_scores(inputs).to(torch.float64)
        count = len(scores)
        if count == 0:
            raise ParameterError(f"{type(self).__name__}: calibrate needs at least one clean input", value=count)
        if count * self.fpr < 1:
            logger.warning(
                "%s: %d calibration inputs are too few for fpr=%g; the threshold is their maximum score, so the "
                "false-positive rate on new data is not controlled. Use at least %d inputs.",
                type(self).__name__,
                count,
                self.fpr,
                math.ceil(1 / self.fpr),
            )
        # The 'higher' quantile flags at most a fraction fpr of the calibration scores.
        self.threshold_ = float(torch.quantile(scores, 1.0 - self.fpr, interpolation="higher"))
        self.score_scale_ = max(float(scores.std()) if count > 1 else 0.0, 1e-12)
        logger.info("%s: threshold %.6g at fpr %.3f from %d clean inputs", type(self).__name__, self.threshold_, self.fpr, count)
        return self

    @torch.no_grad()
    def score_samples(self, inputs: torch.Tensor) -> torch.Tensor:
        """Return the adversarial score of each input, float (N,); higher is more suspicious."""
        check_images(inputs, type(self).__name__)
        self._check_fitted()
        return self._raw_scores(inputs)

    def decision_function(self, inputs: torch.Tensor) -> torch.Tensor:
        """Return ``score - threshold_``: positive for flagged inputs."""
        scores = self.score_samples(inputs)
        assert self.threshold_ is not None  # checked by score_samples
        return scores - self.threshold_

    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        """Return bool (N,): True where the input is flagged as adversarial."""
        return self.decision_function(inputs) > 0

    def flags(self, scores: torch.Tensor) -> torch.Tensor:
        """Return bool (N,): True where a score from :meth:`score_samples` exceeds the threshold."""
        self._check_fitted()
        assert self.threshold_ is not None  # checked above
        return scores > self.threshold_

    def settings(self) -> dict[str, object]:
        """Return the detector's settings, as stored in ``results.json``."""
        return {"fpr": self.fpr}

    def __repr__(self) -> str:
        inner = ", ".join(f"{key}={value!r}" for key, value in self.settings().items())
        return f"{type(self).__name__}({inner})"

    # --- helpers --------------------------------------------------------------------

    @torch.no_grad()
    def _raw_scores(self, inputs: torch.Tensor) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            scores = [
                self.differentiable_score(inputs[start : start + self.batch_size]).detach()
                for start in range(0, len(inputs), self.batch_size)
            ]
        finally:
            self.model.train(was_training)
        return torch.cat(scores) if scores else torch.empty(0)

    def _check_fitted(self) -> None:
        if self.threshold_ is None:
            raise ParameterError(
                f"{type(self).__name__} is not fitted; call fit(clean_inputs, labels) before scoring", value=None
            )

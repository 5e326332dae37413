"""Randomized smoothing: Monte Carlo prediction with abstention and certified L2 radii.

Reference: J. Cohen, E. Rosenfeld, J. Z. Kolter, "Certified adversarial
robustness via randomized smoothing", ICML 2019.

The smoothed classifier ``g(x)`` returns the class that the base model
predicts most often for ``x + N(0, sigma^2 I)``. If the top class has
probability at least ``p_A > 1/2`` under the noise, ``g`` is constant within
the L2 ball of radius ``sigma * Phi^-1(p_A)`` around ``x``. :meth:`certify`
estimates a lower confidence bound of ``p_A`` by sampling (Clopper-Pearson),
so each certificate is valid with probability at least ``1 - alpha``, and
:meth:`predict` abstains unless a binomial test separates the top two
classes at level ``alpha``.

Limitations: the guarantee is for L2 perturbations and for the smoothed
classifier ``g``, not for the base model. Noise is added in pixel space
without clipping to the bounds, as in Cohen et al. Certified radii are only
useful when the base model was trained with the same noise (``mlwarden
train --defense gaussian:sigma=0.25``). Randomness follows call order; see
:mod:`~mlwarden.defenses.evasion.randomization`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import beta, binom, norm
from torch import nn

from ..._validation import check_int, check_real, owner_of
from ...attacks.base import model_bounds
from ...attacks.gradients import evaluation_mode
from ...errors import ParameterError
from ...threat import DefenseProfile, Posture, Stage
from .base import check_images, piecewise_constant

__all__ = [
    "RandomizedSmoothing",
    "ABSTAIN",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "certified_accuracy",
]

logger = logging.getLogger(__name__)

ABSTAIN = -1


def clopper_pearson_lower(successes: np.ndarray | int, trials: np.ndarray | int, alpha: float) -> np.ndarray:
    """Return the one-sided ``1 - alpha`` Clopper-Pearson lower bound of a binomial proportion."""
    successes = np.asarray(successes, dtype=np.float64)
    trials = np.broadcast_to(np.asarray(trials, dtype=np.float64), successes.shape)
    with np.errstate(invalid="ignore"):
        bound = beta.ppf(alpha, successes, trials - successes + 1)
    return np.where(successes <= 0, 0.0, bound)


def clopper_pearson_upper(successes: np.ndarray | int, trials: np.ndarray | int, alpha: float) -> np.ndarray:
    """Return the one-sided ``1 - alpha`` Clopper-Pearson upper bound of a binomial proportion."""
    successes = np.asarray(successes, dtype=np.float64)
    trials = np.broadcast_to(np.asarray(trials, dtype=np.float64), successes.shape)
    with np.errstate(invalid="ignore"):
        bound = beta.ppf(1 - alpha, successes + 1, trials - successes)
    return np.where(successes >= trials, 1.0, bound)


def certified_accuracy(
    predictions: torch.Tensor, radii: torch.Tensor, labels: torch.Tensor, thresholds: Sequence[float]
) -> dict[float, float]:
    """Return, for each radius r, the fraction of samples predicted correctly with a certified radius >= r."""
    correct = predictions == labels
    count = max(len(labels), 1)
    return {float(r): float((correct & (radii >= r)).sum()) / count for r in thresholds}


class RandomizedSmoothing(nn.Module):
    """The smoothed classifier of Cohen et al. (2019) around a base model.

    As an ``nn.Module``, :meth:`forward` returns the vote shares of
    ``samples`` noisy copies of each input, as logits whose argmax is the
    smoothed prediction without abstention. Votes have no gradient, so naive
    gradient attacks do nothing; :meth:`forward_soft` (the adaptive attack's
    view) averages softmax probabilities over noise, which is differentiable.

    Known to fall to: nothing inside the certified radius, by construction.
    Outside it, the attack on the soft smoothed classifier with EOT over the
    noise (Salman et al., "Provably robust deep learning via adversarially
    trained smoothed classifiers", NeurIPS 2019) flips predictions.

    Parameters
    ----------
    model : nn.Module
        Base classifier.
    sigma : float, default 0.25
        Standard deviation of the Gaussian noise, in pixel units.
    samples : int, default 100
        Noise draws per input in :meth:`forward` and :meth:`forward_soft`.
    batch_size : int, default 10000
        Noisy inputs per forward pass of the base model.
    seed : int, default 0
    bounds : (low, high), optional

    Examples
    --------
    >>> import torch
    >>> from mlwarden.models import load_pretrained
    >>> model, _ = load_pretrained("lenet5")
    >>> smoothed = RandomizedSmoothing(model, sigma=0.25)
    >>> predictions, radii = smoothed.certify(torch.rand(2, 1, 28, 28), n0=20, n=100)
    >>> predictions.shape, radii.shape
    (torch.Size([2]), torch.Size([2]))
    """

    name = "smoothing"
    profile = DefenseProfile(Posture.PROACTIVE, Stage.INFERENCE, ("evasion",))
    randomized = True
    known_bypass = "EOT on the soft smoothed classifier, outside the certified radius only"

    def __init__(
        self,
        model: nn.Module,
        *,
        sigma: float = 0.25,
        samples: int = 100,
        batch_size: int = 10000,
        seed: int = 0,
        bounds: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        owner = owner_of(self)
        if not isinstance(model, nn.Module):
            raise ParameterError(f"{owner}: model must be a torch.nn.Module, got {type(model).__name__}", value=type(model))
        self.model = model
        self.sigma = check_real(sigma, "sigma", owner, low=0.0, low_inclusive=False)
        self.samples = check_int(samples, "samples", owner, low=1)
        self.batch_size = check_int(batch_size, "batch_size", owner, low=1)
        self.seed = check_int(seed, "seed", owner)
        self.bounds = model_bounds(model, bounds)
        self.generator = torch.Generator().manual_seed(self.seed)

    def reseed(self, seed: int) -> None:
        """Restart the noise draws from ``seed``."""
        self.seed = check_int(seed, "seed", type(self).__name__)
        self.generator.manual_seed(self.seed)

    # --- noisy passes ---------------------------------------------------------------

    def _noisy_outputs(self, inputs: torch.Tensor, draws: int, soft: bool) -> torch.Tensor:
        """Return per-input sums over ``draws`` noisy copies: class counts, or softmax probabilities if ``soft``.

        Inputs are processed in chunks of at most ``batch_size`` noisy copies.
        """
        count = inputs.shape[0]
        per_chunk = max(1, self.batch_size // max(count, 1))
        totals: torch.Tensor | None = None
        remaining = draws
        while remaining > 0:
            this = min(per_chunk, remaining)
            remaining -= this
            copies = inputs.unsqueeze(1).expand(count, this, *inputs.shape[1:]).reshape(count * this, *inputs.shape[1:])
            noise = torch.randn(copies.shape, generator=self.generator).to(copies) * self.sigma
            logits = self.model(copies + noise)
            if soft:
                part = torch.softmax(logits, dim=1).view(count, this, -1).sum(dim=1)
            else:
                labels = logits.argmax(dim=1).view(count, this)
                part = torch.nn.functional.one_hot(labels, logits.shape[1]).sum(dim=1).to(inputs.dtype)
            totals = part if totals is None else totals + part
        assert totals is not None  # draws >= 1
        return totals

    def _counts(self, inputs: torch.Tensor, draws: int) -> torch.Tensor:
        """Return int64 class counts (N, classes) over ``draws`` noisy copies, in chunks of inputs."""
        chunks = []
        with torch.no_grad():
            step = max(1, min(len(inputs), self.batch_size))
            for start in range(0, len(inputs), step):
                chunks.append(self._noisy_outputs(inputs[start : start + step], draws, soft=False))
        return torch.cat(chunks).round().long()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            votes = self._noisy_outputs(inputs, self.samples, soft=False) / self.samples
            # Ties go to the class with the lower index, as argmax does. The tie-break term is below
            # one vote's share, so it never overturns a difference of one vote.
            tie_break = -torch.arange(votes.shape[1], dtype=votes.dtype) / (votes.shape[1] * 2.0 * self.samples)
        return piecewise_constant(votes + tie_break, inputs)

    def forward_soft(self, inputs: torch.Tensor, samples: int | None = None) -> torch.Tensor:
        """Return the log of the mean softmax probability over noise draws (differentiable).

        ``samples`` draws per input, default the ``samples`` setting.
        """
        draws = self.samples if samples is None else check_int(samples, "samples", type(self).__name__, low=1)
        totals = self._noisy_outputs(inputs, draws, soft=True)
        return torch.log((totals / draws).clamp_min(1e-12))

    # --- Cohen et al.: PREDICT and CERTIFY ------------------------------------------

    def predict(self, inputs: torch.Tensor, *, n: int = 1000, alpha: float = 0.001) -> torch.Tensor:
        """Return the smoothed prediction of each input, or ``ABSTAIN`` (-1).

        The top class is returned when a two-sided binomial test rejects, at
        level ``alpha``, that the top two classes are equally likely under
        the noise. The probability of returning a class other than the
        smoothed classifier's is then at most ``alpha``.
        """
        owner = owner_of(self)
        check_images(inputs, owner)
        n = check_int(n, "n", owner, low=1)
        alpha = check_real(alpha, "alpha", owner, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
        with evaluation_mode(self.model):
            counts = self._counts(inputs, n)
        top_two = counts.topk(2, dim=1)
        first, second = top_two.values[:, 0].numpy(), top_two.values[:, 1].numpy()
        p_values = np.minimum(1.0, 2.0 * binom.cdf(second, first + second, 0.5))
        predictions = top_two.indices[:, 0].clone()
        predictions[torch.from_numpy(p_values > alpha)] = ABSTAIN
        return predictions

    def certify(
        self, inputs: torch.Tensor, *, n0: int = 100, n: int = 1000, alpha: float = 0.001
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the certified prediction and L2 radius of each input.

        ``n0`` noise draws select the top class; ``n`` fresh draws bound its
        probability ``p_A`` from below at confidence ``1 - alpha``. The radius
        is ``sigma * Phi^-1(p_A_lower)``; where ``p_A_lower <= 1/2`` the
        prediction is ``ABSTAIN`` and the radius 0.

        Returns
        -------
        predictions : torch.Tensor
            int64 (N,), class or ``ABSTAIN``.
        radii : torch.Tensor
            float64 (N,), certified L2 radius in pixel units.
        """
        owner = owner_of(self)
        check_images(inputs, owner)
        n0 = check_int(n0, "n0", owner, low=1)
        n = check_int(n, "n", owner, low=1)
        alpha = check_real(alpha, "alpha", owner, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
        with evaluation_mode(self.model):
            selection = self._counts(inputs, n0).argmax(dim=1)
            counts = self._counts(inputs, n)
        top = counts.gather(1, selection[:, None]).squeeze(1).numpy()
        lower = clopper_pearson_lower(top, n, alpha)
        certified = lower > 0.5
        radii = np.where(certified, self.sigma * norm.ppf(np.clip(lower, 0.5, 1.0)), 0.0)
        predictions = selection.clone()
        predictions[torch.from_numpy(~certified)] = ABSTAIN
        return predictions, torch.from_numpy(radii)

    def settings(self) -> dict[str, object]:
        """Return the settings, as stored in ``results.json``."""
        return {"sigma": self.sigma, "samples": self.samples, "seed": self.seed}

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, samples={self.samples}, seed={self.seed}"


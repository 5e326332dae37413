"""Adaptive attacks on defenses: BPDA, expectation over transformation, and detector-aware PGD.

References
----------
A. Athalye, N. Carlini, D. Wagner, "Obfuscated gradients give a false sense
of security: circumventing defenses to adversarial examples", ICML 2018
(BPDA, and EOT against randomized defenses).
A. Athalye, L. Engstrom, A. Ilyas, K. Kwok, "Synthesizing robust
adversarial examples", ICML 2018 (EOT).
N. Carlini, D. Wagner, "Adversarial examples are not easily detected:
bypassing ten detection methods", AISec 2017 (one loss for the classifier
and the detector).
F. Tramèr, N. Carlini, W. Brendel, A. Madry, "On adaptive attacks to
adversarial example defenses", NeurIPS 2020.

A defense that changes predictions is attacked through :func:`adaptive_model`,
a view of the defense whose outputs are the defense's own but whose
gradients are useful: non-differentiable steps are replaced by their
approximation in the backward pass (BPDA), and random ones are averaged
over ``eot_samples`` draws (EOT). Any gradient attack of mlwarden runs on
that view unchanged. Adversarial inputs found on the view must be judged by
the defense itself, since the EOT view averages draws that a single call
of the defense does not.

A detector is attacked by :func:`detector_aware_attack`, projected gradient
descent on the classification margin plus the detector's score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..._validation import check_int, check_real
from ...attacks.base import model_bounds
from ...errors import ParameterError
from .base import AdversarialDetector
from .smoothing import RandomizedSmoothing

__all__ = [
    "BPDAView",
    "ExpectationOverTransformation",
    "SoftSmoothingView",
    "adaptive_model",
    "adaptive_method",
    "detector_aware_attack",
]


class BPDAView(nn.Module):
    """The defense with its BPDA forward pass: same logits, gradients through the approximation."""

    def __init__(self, defense: nn.Module) -> None:
        super().__init__()
        self.defense = defense
        self.bounds = model_bounds(defense)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.defense.forward_bpda(inputs)  # type: ignore[operator]


class ExpectationOverTransformation(nn.Module):
    """A random model averaged over ``samples`` draws: the log of the mean softmax probability.

    The draws run as one batch of ``samples`` copies of the inputs. Gradient
    attacks on this module follow the gradient of the expected probability
    of each class, which a single random draw does not reveal.
    """

    def __init__(self, model: nn.Module, samples: int = 10) -> None:
        super().__init__()
        self.model = model
        self.samples = check_int(samples, "eot_samples", "ExpectationOverTransformation", low=1)
        self.bounds = model_bounds(model)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        count = inputs.shape[0]
        copies = inputs.repeat(self.samples, *([1] * (inputs.dim() - 1)))
        log_probabilities = torch.log_softmax(self.model(copies), dim=1).view(self.samples, count, -1)
        return torch.logsumexp(log_probabilities, dim=0) - math.log(self.samples)


class SoftSmoothingView(nn.Module):
    """The soft smoothed classifier: mean softmax over ``samples`` noise draws (Salman et al., 2019)."""

    def __init__(self, smoothing: RandomizedSmoothing, samples: int = 10) -> None:
        super().__init__()
        self.smoothing = smoothing
        self.samples = check_int(samples, "eot_samples", "SoftSmoothingView", low=1)
        self.bounds = smoothing.bounds

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.smoothing.forward_soft(inputs, samples=self.samples)


def adaptive_model(defense: nn.Module, *, eot_samples: int = 10) -> nn.Module:
    """Return the view of ``defense`` that adaptive attacks differentiate.

    - randomized smoothing: the soft smoothed classifier over ``eot_samples`` draws;
    - a defense with ``forward_bpda``: BPDA, then EOT over ``eot_samples``
      draws if the defense is randomized;
    - any other module (a robust-trained model, for example): the module itself.
    """
    eot_samples = check_int(eot_samples, "eot_samples", "adaptive_model", low=1)
    if isinstance(defense, RandomizedSmoothing):
        return SoftSmoothingView(defense, eot_samples)
    view: nn.Module = BPDAView(defense) if callable(getattr(defense, "forward_bpda", None)) else defense
    if getattr(defense, "randomized", False):
        view = ExpectationOverTransformation(view, eot_samples)
    return view


def adaptive_method(defense: nn.Module | AdversarialDetector, *, eot_samples: int = 10) -> str:
    """Return a short description of the adaptive attack used against ``defense``, for reports."""
    if isinstance(defense, AdversarialDetector):
        return "PGD on the classification margin plus the detector score"
    if isinstance(defense, RandomizedSmoothing):
        return f"soft smoothed classifier, EOT over {eot_samples} noise draws"
    parts = []
    if callable(getattr(defense, "forward_bpda", None)) and not getattr(defense, "differentiable", False):
        parts.append("BPDA")
    if getattr(defense, "randomized", False):
        parts.append(f"EOT over {eot_samples} draws")
    return " + ".join(parts) if parts else "same attack (the defense is differentiable and deterministic)"


def _margin(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None, confidence: float) -> torch.Tensor:
    """Return the per-sample margin to minimize: negative once the attack's goal is met by ``confidence``."""
    if targets is None:
        true = logits.gather(1, labels[:, None]).squeeze(1)
        others = logits.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
        return (true - others).clamp_min(-confidence)
    target = logits.gather(1, targets[:, None]).squeeze(1)
    others = logits.scatter(1, targets[:, None], float("-inf")).amax(dim=1)
    return (others - target).clamp_min(-confidence)


def _as_budget(eps: float | torch.Tensor, count: int, owner: str) -> torch.Tensor:
    if isinstance(eps, torch.Tensor):
        if eps.shape != (count,) or bool((eps < 0).any()):
            raise ParameterError(f"{owner}: eps must be a non-negative scalar or a tensor of shape ({count},)", value=eps)
        return eps.to(torch.float32)
    return torch.full((count,), check_real(eps, "eps", owner, low=0.0))


def detector_aware_attack(
    model: nn.Module,
    detector: AdversarialDetector,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    norm: str = "linf",
    targets: torch.Tensor | None = None,
    steps: int = 40,
    step_size: float | None = None,
    weight: float = 1.0,
    confidence: float = 1.0,
    bounds: Sequence[float] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Return inputs that the model misclassifies and the detector accepts, where the budget allows.

    Projected gradient descent on ``margin(x) + weight * max(0, (s(x) - t) / scale + 0.1)``:
    the classification margin (true logit minus the best other one, floored
    at ``-confidence``) plus how far the detector score ``s`` lies above the
    threshold ``t``, in units of the clean scores' standard deviation. Each
    sample keeps its first iterate that is misclassified and not flagged;
    the others end at their last iterate.

    Parameters
    ----------
    model : nn.Module
        The classifier the detector protects.
    detector : AdversarialDetector
        A fitted detector.
    inputs, labels : torch.Tensor
        Clean batch (N, ...) in ``bounds`` and its int64 labels (N,).
    eps : float or torch.Tensor
        Budget in ``norm``; a tensor (N,) gives each sample its own.
    norm : {"linf", "l2"}, default "linf"
    targets : torch.Tensor, optional
        int64 (N,): makes the attack targeted.
    steps : int, default 40
    step_size : float, optional
        Default ``2.5 * eps / steps`` per sample.
    weight : float, default 1.0
        Weight of the detector term.
    confidence : float, default 1.0
        Logit margin beyond the decision boundary that the attack stops pushing for.
    bounds : (low, high), optional
    generator : torch.Generator, optional
        Random start inside the budget; default a generator seeded with 0.
    """
    owner = "detector_aware_attack"
    if detector.threshold_ is None or detector.score_scale_ is None:
        raise ParameterError(f"{owner}: the detector is not fitted; call detector.fit(...) first", value=None)
    if norm not in ("linf", "l2"):
        raise ParameterError(f"{owner}: norm must be 'linf' or 'l2', got {norm!r}", value=norm)
    steps = check_int(steps, "steps", owner, low=1)
    weight = check_real(weight, "weight", owner, low=0.0)
    low, high = model_bounds(model, bounds)
    count = inputs.shape[0]
    budget = _as_budget(eps, count, owner)
    shape = (-1,) + (1,) * (inputs.dim() - 1)
    sizes = (budget * 2.5 / steps if step_size is None else torch.full((count,), float(step_size))).view(shape)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    threshold, scale = detector.threshold_, detector.score_scale_

    inputs = inputs.detach()
    start = _random_start(inputs, budget.view(shape), norm, generator)
    adversarial = _project(start, inputs, budget.view(shape), norm).clamp(low, high)
    result = adversarial.clone()
    done = torch.zeros(count, dtype=torch.bool)
    was_training = model.training
    model.eval()
    try:
        for _ in range(steps):
            adversarial.requires_grad_(True)
            with torch.enable_grad():
                logits = model(adversarial)
                scores = detector.differentiable_score(adversarial)
                loss = _margin(logits, labels, targets, confidence) + weight * torch.relu((scores - threshold) / scale + 0.1)
                (gradient,) = torch.autograd.grad(loss.sum(), adversarial)
            adversarial = adversarial.detach()

            # Keep each sample's first iterate that fools the model and passes the detector.
            fooled = logits.argmax(1) != labels if targets is None else logits.argmax(1) == targets
            newly = fooled.detach() & (scores.detach() <= threshold) & ~done
            result[newly] = adversarial[newly]
            done |= newly
            if bool(done.all()):
                break

            if norm == "linf":
                direction = gradient.sign()
            else:
                direction = gradient / gradient.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
            stepped = adversarial - sizes * direction
            adversarial = _project(stepped, inputs, budget.view(shape), norm).clamp(low, high)
    finally:
        model.train(was_training)
    result[~done] = adversarial[~done]
    return result.detach()


def _random_start(inputs: torch.Tensor, budget: torch.Tensor, norm: str, generator: torch.Generator) -> torch.Tensor:
    noise = torch.rand(inputs.shape, generator=generator).to(inputs) * 2 - 1
    if norm == "linf":
        return inputs + noise * budget
    # L2: a random direction at a random fraction of the radius.
    direction = noise / noise.flatten(1).norm(dim=1).clamp_min(1e-12).view(budget.shape)
    fraction = torch.rand(inputs.shape[0], generator=generator).to(inputs).view(budget.shape)
    return inputs + direction * budget * fraction


def _project(candidate: torch.Tensor, inputs: torch.Tensor, budget: torch.Tensor, norm: str) -> torch.Tensor:
    delta = candidate - inputs
    if norm == "linf":
        return inputs + torch.maximum(torch.minimum(delta, budget), -budget)
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(budget.shape)
    return inputs + delta * (budget / norms).clamp(max=1.0)

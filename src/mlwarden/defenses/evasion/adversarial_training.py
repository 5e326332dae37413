"""Robust training: PGD adversarial training, fast FGSM training, TRADES and Gaussian augmentation.

References
----------
A. Madry, A. Makelov, L. Schmidt, D. Tsipras, A. Vladu, "Towards deep
learning models resistant to adversarial attacks", ICLR 2018 (PGD training).
E. Wong, L. Rice, J. Z. Kolter, "Fast is better than free: revisiting
adversarial training", ICLR 2020 (one FGSM step from a random start).
H. Zhang, Y. Yu, J. Jiao, E. Xing, L. El Ghaoui, M. Jordan, "Theoretically
principled trade-off between robustness and accuracy", ICML 2019 (TRADES).
J. Cohen, E. Rosenfeld, J. Z. Kolter, "Certified adversarial robustness via
randomized smoothing", ICML 2019 (training with Gaussian noise, the base
model of :class:`~mlwarden.defenses.evasion.smoothing.RandomizedSmoothing`).

Each method is a batch loss for :func:`mlwarden.models.training.train_model`:
``method(model, inputs, labels) -> loss``. Adversarial inputs are generated
in eval mode (so batch-norm statistics see only the training inputs), and
the loss is computed in the mode the training loop set. ``epoch_hook(test)``
returns the per-epoch hook that measures robust accuracy on held-out images.

Robust training does not mask gradients, so the standard white-box PGD
attack is already the adaptive one. It is known to fall to larger budgets
than it was trained for and to other norms (an L-inf-trained model is not
robust to L2 or L0 attacks of similar visibility). Fast FGSM training is
also known to overfit catastrophically at large budgets (Wong et al., 2020).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..._validation import check_int, check_real, owner_of
from ...attacks.base import model_bounds
from ...attacks.gradients import evaluation_mode
from ...data import Dataset
from ...errors import ParameterError
from ...threat import DefenseProfile, Posture, Stage

__all__ = [
    "RobustTraining",
    "PGDAdversarialTraining",
    "FastAdversarialTraining",
    "TRADES",
    "GaussianAugmentation",
    "TRAINING_DEFENSES",
    "build_training_defense",
    "pgd_perturbation",
    "robust_accuracy",
]

logger = logging.getLogger(__name__)

_PROFILE = DefenseProfile(Posture.PROACTIVE, Stage.TRAINING, ("evasion",))

LossOfLogits = Callable[[torch.Tensor], torch.Tensor]


def pgd_perturbation(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    loss: LossOfLogits | None = None,
) -> torch.Tensor:
    """Return L-inf PGD adversarial inputs that ascend ``loss`` (default: summed cross-entropy).

    Every sample takes all ``steps``; the model's mode is left as the caller set it.
    ``step_size`` defaults to ``2.5 * eps / steps``.
    """
    low, high = model_bounds(model)
    step_size = 2.5 * eps / steps if step_size is None else step_size
    objective = loss if loss is not None else (lambda logits: F.cross_entropy(logits, labels, reduction="sum"))
    inputs = inputs.detach()
    adversarial = inputs.clone()
    if random_start:
        adversarial = adversarial + (torch.rand(inputs.shape, generator=generator).to(inputs) * 2 - 1) * eps
    lower, upper = (inputs - eps).clamp_min(low), (inputs + eps).clamp_max(high)
    adversarial = torch.maximum(torch.minimum(adversarial, upper), lower)
    for _ in range(steps):
        adversarial.requires_grad_(True)
        with torch.enable_grad():
            (gradient,) = torch.autograd.grad(objective(model(adversarial)), adversarial)
        adversarial = adversarial.detach() + step_size * gradient.sign()
        adversarial = torch.maximum(torch.minimum(adversarial, upper), lower)
    return adversarial.detach()


@torch.no_grad()
def _accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> int:
    return int((model(inputs).argmax(1) == labels).sum())


def robust_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    steps: int = 10,
    batch_size: int = 500,
    seed: int = 0,
) -> float:
    """Return the accuracy under L-inf PGD with a random start, in eval mode (mode restored)."""
    generator = torch.Generator().manual_seed(seed)
    correct = 0
    with evaluation_mode(model):
        for start in range(0, len(labels), batch_size):
            batch, batch_labels = images[start : start + batch_size], labels[start : start + batch_size]
            adversarial = pgd_perturbation(model, batch, batch_labels, eps=eps, steps=steps, generator=generator)
            correct += _accuracy(model, adversarial, batch_labels)
    return correct / max(len(labels), 1)


class RobustTraining:
    """A robust-training method: a batch loss for ``train_model`` and its per-epoch hook.

    Subclasses state in their docstring, and in ``known_bypass``, the attack
    they are known to fall to.

    Parameters
    ----------
    eps : float, default 0.1
        L-inf budget of the training attack and of the per-epoch evaluation.
    seed : int, default 0
        Seed of the random starts.
    evaluation_samples : int, default 1000
        Held-out images on which each epoch's robust accuracy is measured.
    evaluation_steps : int, default 10
        PGD steps of that measurement.
    """

    name: ClassVar[str] = "robust-training"
    profile: ClassVar[DefenseProfile] = _PROFILE
    known_bypass: ClassVar[str] = "larger budgets and other norms than trained for"

    def __init__(self, *, eps: float = 0.1, seed: int = 0, evaluation_samples: int = 1000, evaluation_steps: int = 10) -> None:
        owner = owner_of(self)
        self.eps = check_real(eps, "eps", owner, low=0.0, low_inclusive=False)
        self.seed = check_int(seed, "seed", owner)
        self.evaluation_samples = check_int(evaluation_samples, "evaluation_samples", owner, low=1)
        self.evaluation_steps = check_int(evaluation_steps, "evaluation_steps", owner, low=1)
        self.generator = torch.Generator().manual_seed(self.seed)

    def __call__(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def epoch_hook(self, test: Dataset) -> Callable[[nn.Module], dict[str, float]]:
        """Return the hook that measures PGD accuracy at ``eps`` on the first held-out images."""
        images, labels = test.images[: self.evaluation_samples], test.labels[: self.evaluation_samples]

        def hook(model: nn.Module) -> dict[str, float]:
            return {
                "robust_accuracy": robust_accuracy(
                    model, images, labels, eps=self.eps, steps=self.evaluation_steps, seed=self.seed
                )
            }

        return hook

    def settings(self) -> dict[str, Any]:
        """Return the settings, as recorded in the weights' sidecar."""
        return {"eps": self.eps, "seed": self.seed}

    def describe(self) -> dict[str, Any]:
        """Return the sidecar's ``defense`` record: name, settings and what the method is known to fall to."""
        return {"name": self.name, **self.settings(), "known_bypass": self.known_bypass}

    def _attack(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        with evaluation_mode(model):
            return pgd_perturbation(model, inputs, labels, eps=self.eps, generator=self.generator, **kwargs)


class PGDAdversarialTraining(RobustTraining):
    """Train on L-inf PGD adversarial inputs only (Madry et al., 2018).

    Known to fall to larger budgets than ``eps`` and to L2 or L0 attacks;
    white-box PGD is already the adaptive attack, since nothing is masked.

    Parameters
    ----------
    eps : float, default 0.1
    steps : int, default 10
    step_size : float, optional
        Default ``2.5 * eps / steps``.
    seed, evaluation_samples, evaluation_steps
        As in :class:`RobustTraining`.
    """

    name = "pgd"
    known_bypass = "larger budgets and other norms than trained for (L2, L0)"

    def __init__(self, *, eps: float = 0.1, steps: int = 10, step_size: float | None = None, **common: Any) -> None:
        super().__init__(eps=eps, **common)
        owner = owner_of(self)
        self.steps = check_int(steps, "steps", owner, low=1)
        self.step_size = None if step_size is None else check_real(step_size, "step_size", owner, low=0.0, low_inclusive=False)

    def __call__(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        adversarial = self._attack(model, inputs, labels, steps=self.steps, step_size=self.step_size)
        return F.cross_entropy(model(adversarial), labels)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "steps": self.steps, "step_size": self.step_size}


class FastAdversarialTraining(RobustTraining):
    """Train on one FGSM step from a uniform random start in the eps-ball (Wong et al., 2020).

    Known to fall to PGD once training overfits catastrophically (see
    Notes), and like PGD training to larger budgets and other norms.

    Parameters
    ----------
    eps : float, default 0.1
    step_size : float, optional
        Default ``1.25 * eps``, the setting of Wong et al.

    Notes
    -----
    Known to overfit catastrophically at large budgets: robust accuracy
    against PGD collapses within an epoch while FGSM accuracy stays high.
    Watch the per-epoch robust accuracy, which is measured with PGD.
    """

    name = "fgsm"
    known_bypass = "PGD after catastrophic overfitting; larger budgets and other norms than trained for"

    def __init__(self, *, eps: float = 0.1, step_size: float | None = None, **common: Any) -> None:
        super().__init__(eps=eps, **common)
        owner = owner_of(self)
        self.step_size = None if step_size is None else check_real(step_size, "step_size", owner, low=0.0, low_inclusive=False)

    def __call__(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        step_size = 1.25 * self.eps if self.step_size is None else self.step_size
        adversarial = self._attack(model, inputs, labels, steps=1, step_size=step_size)
        return F.cross_entropy(model(adversarial), labels)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "step_size": self.step_size}


class TRADES(RobustTraining):
    """Cross-entropy on clean inputs plus ``beta`` times the KL divergence to the adversarial output.

    Known to fall to larger budgets than ``eps`` and to L2 or L0 attacks,
    like PGD training.

    The inner attack maximizes the KL divergence between the model's output
    on the clean input and on the perturbed one, starting from small
    Gaussian noise (Zhang et al., 2019).

    Parameters
    ----------
    eps : float, default 0.1
    beta : float, default 6.0
        Weight of the robustness term; larger trades clean accuracy for robustness.
    steps : int, default 10
    step_size : float, optional
        Default ``2.5 * eps / steps``.
    """

    name = "trades"
    known_bypass = "larger budgets and other norms than trained for (L2, L0)"

    def __init__(
        self, *, eps: float = 0.1, beta: float = 6.0, steps: int = 10, step_size: float | None = None, **common: Any
    ) -> None:
        super().__init__(eps=eps, **common)
        owner = owner_of(self)
        self.beta = check_real(beta, "beta", owner, low=0.0)
        self.steps = check_int(steps, "steps", owner, low=1)
        self.step_size = None if step_size is None else check_real(step_size, "step_size", owner, low=0.0, low_inclusive=False)

    def __call__(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        low, high = model_bounds(model)
        with evaluation_mode(model), torch.no_grad():
            clean_probabilities = torch.softmax(model(inputs), dim=1)

        def divergence(logits: torch.Tensor) -> torch.Tensor:
            return F.kl_div(torch.log_softmax(logits, dim=1), clean_probabilities, reduction="sum")

        start = (inputs + 0.001 * torch.randn(inputs.shape, generator=self.generator)).clamp(low, high)
        with evaluation_mode(model):
            adversarial = pgd_perturbation(
                model, start, labels, eps=self.eps, steps=self.steps, step_size=self.step_size, random_start=False, loss=divergence
            )
        # pgd_perturbation projected onto the ball around the noisy start; project onto the clean input's ball.
        adversarial = torch.maximum(torch.minimum(adversarial, inputs + self.eps), inputs - self.eps).clamp(low, high)
        logits = model(inputs)
        robustness = F.kl_div(
            torch.log_softmax(model(adversarial), dim=1), torch.softmax(logits, dim=1), reduction="batchmean"
        )
        return F.cross_entropy(logits, labels) + self.beta * robustness

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "beta": self.beta, "steps": self.steps, "step_size": self.step_size}


class GaussianAugmentation(RobustTraining):
    """Train on inputs with Gaussian noise of standard deviation ``sigma`` (Cohen et al., 2019).

    Known to fall to any white-box attack on the base model alone; it is
    meant as the base model of randomized smoothing.

    It is the training that makes randomized smoothing certify useful
    radii. By itself it gives little robustness to L-inf attacks, so the
    per-epoch PGD accuracy (at ``eps``) stays low.

    Parameters
    ----------
    sigma : float, default 0.25
        Noise in pixel units; use the sigma of the smoothing.
    eps : float, default 0.1
        Budget of the per-epoch PGD measurement only.
    """

    name = "gaussian"
    known_bypass = "any white-box attack on the base model; it only prepares the model for randomized smoothing"

    def __init__(self, *, sigma: float = 0.25, eps: float = 0.1, **common: Any) -> None:
        super().__init__(eps=eps, **common)
        self.sigma = check_real(sigma, "sigma", type(self).__name__, low=0.0, low_inclusive=False)

    def __call__(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(inputs.shape, generator=self.generator).to(inputs) * self.sigma
        return F.cross_entropy(model(inputs + noise), labels)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "sigma": self.sigma}


TRAINING_DEFENSES: dict[str, type[RobustTraining]] = {
    cls.name: cls for cls in (PGDAdversarialTraining, FastAdversarialTraining, TRADES, GaussianAugmentation)
}


def build_training_defense(text: str, *, seed: int | None = None) -> RobustTraining:
    """Return the robust-training method named by ``NAME[:key=value,...]``, e.g. ``pgd:eps=0.1,steps=7``.

    ``seed`` seeds the method's random starts unless the text sets ``seed``.

    Raises
    ------
    ParameterError
        The name is unknown, or a setting is unknown or invalid.
    """
    from ...assess.plan import parse_spec  # imported here: mlwarden.assess imports this package

    name, settings = parse_spec(text, "defense")
    if name not in TRAINING_DEFENSES:
        raise ParameterError(
            f"unknown training defense {name!r}; choose one of {', '.join(sorted(TRAINING_DEFENSES))}", value=name
        )
    cls = TRAINING_DEFENSES[name]
    known = _setting_names(cls)
    unknown = [key for key in settings if key not in known]
    if unknown:
        raise ParameterError(
            f"training defense {name!r} has no setting {unknown[0]!r}; its settings are {', '.join(known)}",
            value=unknown[0],
        )
    if seed is not None:
        settings.setdefault("seed", seed)
    return cls(**settings)


def _setting_names(cls: type[RobustTraining]) -> list[str]:
    names: list[str] = []
    for klass in cls.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        for parameter in inspect.signature(vars(klass)["__init__"]).parameters.values():
            if parameter.kind is parameter.KEYWORD_ONLY and parameter.name not in names:
                names.append(parameter.name)
    return names

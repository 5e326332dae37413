"""Universal adversarial perturbation: one perturbation, fitted on training images, added to every input.

References: S.-M. Moosavi-Dezfooli, A. Fawzi, O. Fawzi, P. Frossard,
"Universal adversarial perturbations", CVPR 2017 (the threat and its
fooling rate); A. Shafahi, M. Najibi, Z. Xu, J. Dickerson, L. S. Davis,
T. Goldstein, "Universal adversarial training", AAAI 2020 (the stochastic
gradient method used here).

The perturbation ``v`` is fitted on a subset of the training split, never on
the images it is evaluated on. Each step ascends the batch's mean
cross-entropy with a signed (L-inf) or normalized (L2) gradient step, then
projects ``v`` back onto the ``eps``-ball. The cross-entropy is clipped per
image at ``max_loss``, so that images already fooled stop pulling. At attack time every input
gets the same ``v``, clipped to the bounds. The success rate on images it
was not fitted on is the fooling rate of the paper, counted over the
correctly classified images.

Limitations: fitting needs the model's gradients (white-box); against a
model reachable only through queries, fit the perturbation on a surrogate
and use it with :meth:`UniversalPerturbation.use_perturbation`. One
perturbation is fitted per ``eps``; untargeted only.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..._validation import check_choice, check_int, check_real, owner_of
from ...data import Dataset
from ...errors import ParameterError
from ...threat import Frequency, Goal, Knowledge, Level, Scope, Specificity, Stage, ThreatProfile
from ..base import EvasionAttack
from ..gradients import CostCounter, evaluation_mode
from ._fitting import progress_disabled, training_subset

__all__ = ["UniversalPerturbation", "UAP"]

logger = logging.getLogger(__name__)

# Salt of the generator that picks the fitting images.
_SUBSET_SALT = 23


class UniversalPerturbation(EvasionAttack):
    """Universal adversarial perturbation (white-box fit, L-inf or L2).

    Parameters
    ----------
    norm : {"linf", "l2"}, default "linf"
        Norm of the budget ``eps``.
    fit_samples : int, default 2000
        Training images the perturbation is fitted on, at least 1.
    epochs : int, default 5
        Passes over the fitting images.
    batch_size : int, default 100
    step_size : float, optional
        Step of each update in the norm of the budget; default ``eps / 10``.
    max_loss : float, default 10.0
        Per-image cap of the cross-entropy, > 0.
    seed : int, default 0
        Seed of the order of the fitting images.

    Examples
    --------
    >>> from mlwarden.data import load_dataset
    >>> from mlwarden.models import load_pretrained
    >>> lenet, _ = load_pretrained("lenet5")
    >>> train = load_dataset("fashion-mnist", "train").subset(1000)
    >>> attack = UniversalPerturbation(epochs=2)
    >>> attack.fit(lenet, train, eps=0.15).shape  # doctest: +SKIP
    torch.Size([1, 1, 28, 28])
    """

    name = "universal"
    needs_eps = True
    profile = ThreatProfile(
        goal=Goal.INTEGRITY,
        stage=Stage.INFERENCE,
        knowledge=Knowledge.WHITE_BOX,
        frequency=Frequency.ITERATIVE,
        specificity=(Specificity.UNTARGETED,),
        scope=Scope.UNIVERSAL,
        level=Level.IMAGE,
    )

    def __init__(
        self,
        *,
        norm: str = "linf",
        fit_samples: int = 2000,
        epochs: int = 5,
        batch_size: int = 100,
        step_size: float | None = None,
        max_loss: float = 10.0,
        seed: int = 0,
    ) -> None:
        owner = owner_of(self)
        # An instance setting, which shadows the class attribute that the base class reads.
        self.norm = check_choice(norm, "norm", owner, ("linf", "l2"))  # type: ignore[misc]
        self.fit_samples = check_int(fit_samples, "fit_samples", owner, low=1)
        self.epochs = check_int(epochs, "epochs", owner, low=1)
        self.batch_size = check_int(batch_size, "batch_size", owner, low=1)
        self.step_size = None if step_size is None else check_real(step_size, "step_size", owner, low=0.0, low_inclusive=False)
        self.max_loss = check_real(max_loss, "max_loss", owner, low=0.0, low_inclusive=False)
        self.seed = check_int(seed, "seed", owner)
        self._fitting: Dataset | None = None
        self._perturbations: dict[float, torch.Tensor] = {}
        self._progress: bool | None = None

    def settings(self) -> dict[str, object]:
        """Return the constructor settings, without the fitting data and perturbations."""
        keys = ("norm", "fit_samples", "epochs", "batch_size", "step_size", "max_loss", "seed")
        return {key: getattr(self, key) for key in keys}

    # --- fitting ------------------------------------------------------------------------------

    def prepare(self, model: nn.Module, context: Any) -> None:
        """Pick the fitting images from the training split (``assess`` calls this once).

        The perturbation itself is fitted on first use of each ``eps``.
        """
        self._fitting = training_subset(context, self.fit_samples, _SUBSET_SALT)
        self._perturbations = {}
        self._progress = context.progress

    def fit(self, model: nn.Module, train: Dataset, eps: float) -> torch.Tensor:
        """Fit the perturbation for ``eps`` on the first ``fit_samples`` images of ``train``; return it (1, C, H, W)."""
        self._fitting = train.subset(self.fit_samples)
        return self._fit(model, eps, train.bounds)

    def use_perturbation(self, perturbation: torch.Tensor, eps: float) -> None:
        """Use a perturbation fitted elsewhere (on a surrogate, for example) for budget ``eps``."""
        if not isinstance(perturbation, torch.Tensor) or perturbation.dim() != 4 or perturbation.shape[0] != 1:
            raise ParameterError(
                f"{self.name}: perturbation must be a tensor of shape (1, C, H, W), got "
                f"{tuple(getattr(perturbation, 'shape', ()))}",
                value=type(perturbation),
            )
        self._perturbations[float(eps)] = self._project(perturbation.detach().clone(), eps)

    def perturbation(self, eps: float) -> torch.Tensor | None:
        """Return the perturbation fitted for ``eps``, or None."""
        return self._perturbations.get(float(eps))

    def _project(self, perturbation: torch.Tensor, eps: float) -> torch.Tensor:
        if self.norm == "linf":
            return perturbation.clamp(-eps, eps)
        norm = perturbation.norm().clamp_min(1e-12)
        return perturbation * min(1.0, eps / float(norm))

    def _fit(self, model: nn.Module, eps: float, bounds: tuple[float, float]) -> torch.Tensor:
        if self._fitting is None:
            raise ParameterError(
                f"{self.name}: no fitting images; call fit(model, train_data, eps) first (assess does it through "
                "prepare)",
                value=None,
            )
        images, labels = self._fitting.images, self._fitting.labels
        step = self.step_size if self.step_size is not None else eps / 10
        perturbation = torch.zeros(1, *images.shape[1:])
        generator = torch.Generator().manual_seed(self.seed)

        steps = self.epochs * -(-len(images) // self.batch_size)
        bar = tqdm(total=steps, desc=f"{self.name} fit eps={eps:g}", unit="step", disable=progress_disabled(self._progress), leave=False)
        with evaluation_mode(model):
            for _ in range(self.epochs):
                order = torch.randperm(len(images), generator=generator)
                for start in range(0, len(images), self.batch_size):
                    index = order[start : start + self.batch_size]
                    gradient = self._loss_gradient(model, images[index], labels[index], perturbation, bounds)
                    if self.norm == "linf":
                        perturbation = perturbation + step * gradient.sign()
                    else:
                        perturbation = perturbation + step * gradient / gradient.norm().clamp_min(1e-12)
                    perturbation = self._project(perturbation, eps)
                    bar.update(1)
        bar.close()

        self._perturbations[float(eps)] = perturbation
        with torch.no_grad(), evaluation_mode(model):
            fooled = model((images + perturbation).clamp(*bounds)).argmax(1) != model(images).argmax(1)
        logger.info("%s: fitted for eps=%g on %d images, fooling rate there %.3f", self.name, eps, len(images), float(fooled.float().mean()))
        return perturbation

    def _loss_gradient(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, perturbation: torch.Tensor, bounds: tuple[float, float]
    ) -> torch.Tensor:
        """Return the gradient, with respect to the perturbation, of the batch's mean clipped cross-entropy."""
        perturbation = perturbation.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model((images + perturbation).clamp(*bounds))
            loss = F.cross_entropy(logits, labels, reduction="none").clamp(max=self.max_loss).mean()
            (gradient,) = torch.autograd.grad(loss, perturbation)
        return gradient

    # --- the attack -------------------------------------------------------------------------

    def _run(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        targets: torch.Tensor | None,
        eps: float | None,
        bounds: tuple[float, float],
        indices: torch.Tensor,
        counter: CostCounter,
    ) -> torch.Tensor:
        assert eps is not None  # the base class requires eps (needs_eps)
        perturbation = self._perturbations.get(float(eps))
        if perturbation is None:
            perturbation = self._fit(model, eps, bounds)
        return (inputs + perturbation).clamp(*bounds)


UAP = UniversalPerturbation

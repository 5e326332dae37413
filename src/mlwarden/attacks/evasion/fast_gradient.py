"""Fast gradient sign method (FGSM) and its iterative form (BIM).

References
----------
I. J. Goodfellow, J. Shlens, C. Szegedy, "Explaining and harnessing
adversarial examples", ICLR 2015 (FGSM).
A. Kurakin, I. Goodfellow, S. Bengio, "Adversarial examples in the physical
world", ICLR workshop 2017 (BIM, also called I-FGSM).

Both are L-inf attacks in pixel space. BIM stops working on a sample as soon
as one of its iterates is adversarial, keeping that iterate, so its
perturbations are as small as its step schedule allows; the iterate is always
projected onto the eps-ball around the original input, never around the
previous iterate.

Limitations: a single gradient step (FGSM) is weak against models with
masked or noisy gradients; use PGD with restarts or APGD for an evaluation
that matters.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..._validation import check_bool, check_int, check_real, owner_of
from ...threat import Frequency, Goal, Knowledge, Level, Scope, Specificity, Stage, ThreatProfile
from ..base import EvasionAttack
from ..gradients import CostCounter, attack_loss_gradient

__all__ = ["FastGradientSignMethod", "BasicIterativeMethod", "FGSM", "BIM"]

logger = logging.getLogger(__name__)

_BOTH = (Specificity.UNTARGETED, Specificity.TARGETED)


class FastGradientSignMethod(EvasionAttack):
    """One step of size ``eps`` along the sign of the loss gradient (L-inf).

    Untargeted runs ascend the cross-entropy of the true label; targeted
    runs descend the cross-entropy of the target.

    Examples
    --------
    >>> import torch
    >>> from mlwarden.models import load_pretrained
    >>> model, _ = load_pretrained("lenet5")
    >>> result = FGSM()(model, torch.rand(4, 1, 28, 28), torch.zeros(4, dtype=torch.int64), eps=0.1)
    >>> bool(result.linf.max() <= 0.1 + 1e-6)
    True
    """

    name = "fgsm"
    norm = "linf"
    needs_eps = True
    profile = ThreatProfile(
        goal=Goal.INTEGRITY,
        stage=Stage.INFERENCE,
        knowledge=Knowledge.WHITE_BOX,
        frequency=Frequency.ONE_SHOT,
        specificity=_BOTH,
        scope=Scope.INDIVIDUAL,
        level=Level.IMAGE,
    )

    # The gradient pass at the inputs also gives the clean prediction.
    starts_at_input = True

    def _run_at_input(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        targets: torch.Tensor | None,
        eps: float | None,
        bounds: tuple[float, float],
        indices: torch.Tensor,
        counter: CostCounter,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert eps is not None  # the base class requires eps (needs_eps)
        logits, gradient = attack_loss_gradient(model, inputs, labels, targets, counter)
        return inputs.add(gradient.sign(), alpha=eps).clamp_(*bounds), logits


class BasicIterativeMethod(EvasionAttack):
    """FGSM repeated in small steps, each projected onto the eps-ball of the input (L-inf).

    Parameters
    ----------
    steps : int, default 10
        Number of gradient steps, at least 1.
    step_size : float, optional
        Size of each step in pixel units; default ``2.5 * eps / steps``.
    early_stop : bool, default True
        Stop working on a sample at its first adversarial iterate and keep
        that iterate. With False, every sample takes all steps and the last
        iterate is returned.
    """

    name = "bim"
    norm = "linf"
    needs_eps = True
    profile = ThreatProfile(
        goal=Goal.INTEGRITY,
        stage=Stage.INFERENCE,
        knowledge=Knowledge.WHITE_BOX,
        frequency=Frequency.ITERATIVE,
        specificity=_BOTH,
        scope=Scope.INDIVIDUAL,
        level=Level.IMAGE,
    )

    def __init__(self, *, steps: int = 10, step_size: float | None = None, early_stop: bool = True) -> None:
        owner = owner_of(self)
        self.steps = check_int(steps, "steps", owner, low=1)
        self.step_size = None if step_size is None else check_real(step_size, "step_size", owner, low=0.0, low_inclusive=False)
        self.early_stop = check_bool(early_stop, "early_stop", owner)

    def _start(
        self, inputs: torch.Tensor, eps: float, bounds: tuple[float, float], indices: torch.Tensor
    ) -> torch.Tensor:
        """Return the first iterate: the input itself (PGD overrides this with a random start)."""
        return inputs.clone()

    def _step_size(self, eps: float) -> float:
        return self.step_size if self.step_size is not None else 2.5 * eps / self.steps

    def _ascent_step(self, gradient: torch.Tensor, step_size: float) -> torch.Tensor:
        """Return the step for a loss gradient: its sign times the step size (steepest ascent under L-inf)."""
        return step_size * gradient.sign()

    def _project(
        self, candidates: torch.Tensor, inputs: torch.Tensor, eps: float, bounds: tuple[float, float]
    ) -> torch.Tensor:
        """Return ``candidates`` projected onto the eps-ball around ``inputs`` and clipped to the bounds."""
        lower = (inputs - eps).clamp_min(bounds[0])
        upper = (inputs + eps).clamp_max(bounds[1])
        return torch.maximum(torch.minimum(candidates, upper), lower)

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
        step_size = self._step_size(eps)
        adversarial = self._start(inputs, eps, bounds, indices)
        active = torch.arange(inputs.shape[0])
        for _ in range(self.steps):
            sub_targets = None if targets is None else targets[active]
            logits, gradient = attack_loss_gradient(model, adversarial[active], labels[active], sub_targets, counter)

            # The logits belong to the current iterate: freeze the samples it already fools.
            if self.early_stop:
                fooled = self._is_adversarial(logits.argmax(1), labels[active], sub_targets)
                keep = ~fooled
                active, gradient = active[keep], gradient[keep]
                if len(active) == 0:
                    break

            stepped = adversarial[active] + self._ascent_step(gradient, step_size)
            adversarial[active] = self._project(stepped, inputs[active], eps, bounds)
        return adversarial


FGSM = FastGradientSignMethod
BIM = BasicIterativeMethod

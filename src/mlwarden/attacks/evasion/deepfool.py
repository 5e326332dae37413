"""DeepFool: the minimal L2 perturbation of a locally linearized classifier.

Reference: S.-M. Moosavi-Dezfooli, A. Fawzi, P. Frossard, "DeepFool: a simple
and accurate method to fool deep neural networks", CVPR 2016.

At each step the classifier is linearized around the current iterate; the
step goes to the nearest linearized boundary between the true class and one of
the candidate classes, and the accumulated perturbation is scaled by
``1 + overshoot`` so that the iterate crosses the boundary instead of landing
on it. On an affine classifier, the first step is exactly the minimal
perturbation.

Limitations: DeepFool finds small perturbations, not the smallest; it is
untargeted only; clipping to the bounds can stop it short of the boundary,
in which case the sample is reported as not adversarial.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..._validation import check_int, check_real, owner_of
from ...threat import Frequency, Goal, Knowledge, Level, Scope, Specificity, Stage, ThreatProfile
from ..base import EvasionAttack
from ..gradients import CostCounter, class_gradients, predict_logits

__all__ = ["DeepFool"]

logger = logging.getLogger(__name__)

# Added to the logit gap so that a step ends just past the linearized boundary, not on it.
_GAP_MARGIN = 1e-4
# A sample is done once another class leads the label by this fraction of the label's logit (at least
# 1 in magnitude). A lead of a few units in the last place would flip back in another batch size,
# where the convolution rounds differently, so such samples take another step.
_DONE_MARGIN = 1e-4


class DeepFool(EvasionAttack):
    """Multi-class DeepFool (L2), batched over samples.

    Parameters
    ----------
    steps : int, default 50
        Maximum number of linearization steps per sample, at least 1.
    overshoot : float, default 0.02
        Relative factor by which the perturbation is enlarged (>= 0).
    candidates : int, default 10
        Number of classes considered, the true class and those with the
        highest clean logits; at least 2. Capped at the number of classes.
    """

    name = "deepfool"
    norm = "l2"
    needs_eps = False
    profile = ThreatProfile(
        goal=Goal.INTEGRITY,
        stage=Stage.INFERENCE,
        knowledge=Knowledge.WHITE_BOX,
        frequency=Frequency.ITERATIVE,
        specificity=(Specificity.UNTARGETED,),
        scope=Scope.INDIVIDUAL,
        level=Level.IMAGE,
    )

    def __init__(self, *, steps: int = 50, overshoot: float = 0.02, candidates: int = 10) -> None:
        owner = owner_of(self)
        self.steps = check_int(steps, "steps", owner, low=1)
        self.overshoot = check_real(overshoot, "overshoot", owner, low=0.0)
        self.candidates = check_int(candidates, "candidates", owner, low=2)

    def _candidate_classes(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return (N, K) classes: the label first, then the other classes by decreasing clean logit."""
        count = min(self.candidates, logits.shape[1])
        others = logits.scatter(1, labels[:, None], float("-inf"))
        ranked = others.topk(count - 1, dim=1).indices
        return torch.cat([labels[:, None], ranked], dim=1)

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
        classes = self._candidate_classes(predict_logits(model, inputs, counter), labels)
        adversarial = inputs.clone()
        total = torch.zeros_like(inputs)
        active = torch.arange(inputs.shape[0])
        for _ in range(self.steps):
            logits, gradients = class_gradients(model, adversarial[active], classes[active], counter)

            # Samples whose current iterate is misclassified by a clear margin are done.
            label_logits = logits.gather(1, labels[active, None]).squeeze(1)
            lead = logits.scatter(1, labels[active, None], float("-inf")).amax(1) - label_logits
            keep = lead <= _DONE_MARGIN * label_logits.abs().clamp_min(1.0)
            active, logits, gradients = active[keep], logits[keep], gradients[keep]
            if len(active) == 0:
                break

            # Distance to each linearized boundary between the label (column 0) and a candidate.
            picked = logits.gather(1, classes[active])
            gaps = (picked[:, 1:] - picked[:, :1]).abs()
            directions = gradients[:, 1:] - gradients[:, :1]
            direction_norms = directions.flatten(2).norm(dim=2).clamp_min(1e-12)
            nearest = (gaps / direction_norms).argmin(dim=1)

            rows = torch.arange(len(active))
            gap = gaps[rows, nearest] + _GAP_MARGIN
            norm = direction_norms[rows, nearest]
            step = directions[rows, nearest] * (gap / norm**2).view(-1, *([1] * (inputs.dim() - 1)))
            total[active] += step
            adversarial[active] = (inputs[active] + (1 + self.overshoot) * total[active]).clamp(*bounds)
        return adversarial

"""Auto-PGD (APGD): PGD with a step size adapted from progress, momentum and checkpoints.

Reference: F. Croce, M. Hein, "Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks", ICML 2020 (the
AutoAttack paper, which defines APGD and the DLR loss).

Each sample starts with step size ``2 * eps``. After the first plain step,
every step mixes the new projected gradient step with the previous
displacement: ``x_next = P(x + alpha * (z - x) + (1 - alpha) * (x - x_prev))``
where ``z = P(x + eta * direction(gradient))``. At checkpoints placed at the
fractions 0, 0.22, 0.41, 0.57, ... of the steps (each interval 0.03 shorter
than the previous one, but at least 0.06), a sample's step size is halved
and its iterate reset to the best point found so far when either

1. the loss increased in fewer than ``rho`` of the steps since the last
   checkpoint (the iterate oscillates), or
2. the step size was not reduced at the last checkpoint and the best loss
   has not improved since then (the search stalls).

Two losses are available. ``ce`` is the cross-entropy (minus that of the
target in targeted runs). ``dlr``, the difference of logits ratio, is
``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)`` untargeted and
``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`` targeted, with ``z_pi``
the logits sorted in decreasing order. DLR is invariant to shifting and
scaling the logits, so it keeps its gradient where the cross-entropy
saturates. DLR needs 3 classes (4 when targeted). Where the model has fewer,
the attack falls back to cross-entropy and logs a warning.

A sample stops at its first adversarial iterate, which is returned. For the
others, the iterate of highest loss over all restarts is returned. Random
starts are seeded per sample by ``(seed, global index, restart)``.

Limitations: like every gradient attack, APGD can be fooled by obfuscated
gradients (non-differentiable or randomized defenses); pair it with
expectation over randomness or differentiable approximations when the model
is defended.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from ..._validation import check_bool, check_choice, check_int, check_real, owner_of
from ...errors import ParameterError
from ...threat import Frequency, Goal, Knowledge, Level, Scope, Specificity, Stage, ThreatProfile
from .._fast_layers import fast_layers
from ..base import EvasionAttack
from ..gradients import CostCounter, predict_logits
from .pgd import (
    attacker_loss,
    keep_worst_case,
    l2_step,
    project_l2,
    project_linf,
    random_start_noise,
    restart_keys,
)

__all__ = [
    "AutoProjectedGradientDescent",
    "L2AutoProjectedGradientDescent",
    "APGD",
    "L2APGD",
    "apgd_checkpoints",
    "dlr_loss",
]

logger = logging.getLogger(__name__)

LOSSES = ("ce", "dlr")
# Keeps the DLR ratio finite when the top logits are equal.
_DLR_EPSILON = 1e-12


def apgd_checkpoints(steps: int) -> list[int]:
    """Return the iterations at which APGD may halve the step size, for a run of ``steps`` steps.

    The checkpoints are ``ceil(p_j * steps)`` with ``p_0 = 0``, ``p_1 = 0.22``
    and ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, keeping those in
    ``(0, steps)``.

    >>> apgd_checkpoints(100)
    [22, 41, 57, 70, 80, 87, 93, 99]
    """
    fractions = [0.0, 0.22]
    while fractions[-1] < 1.0:
        fractions.append(fractions[-1] + max(fractions[-1] - fractions[-2] - 0.03, 0.06))
    points = {math.ceil(round(p * steps, 9)) for p in fractions[1:]}
    return sorted(point for point in points if 0 < point < steps)


def dlr_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Return the per-sample difference-of-logits-ratio loss that the attacker ascends.

    Untargeted runs need at least 3 classes. Targeted runs use
    ``(z_pi3 + z_pi4) / 2`` in the denominator and need at least 4.

    Raises
    ------
    ValueError
        The logits have too few classes; use cross-entropy instead.
    """
    classes = logits.shape[1]
    if classes < 3:
        raise ValueError(f"the DLR loss needs at least 3 classes, the logits have {classes}; use cross-entropy")
    if targets is not None and classes < 4:
        raise ValueError(f"the targeted DLR loss needs at least 4 classes, the logits have {classes}; use cross-entropy")
    ranked = logits.sort(dim=1, descending=True).values
    true_logit = logits.gather(1, labels[:, None]).squeeze(1)
    if targets is None:
        best_other = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
        scale = ranked[:, 0] - ranked[:, 2]
        return -(true_logit - best_other) / (scale + _DLR_EPSILON)
    target_logit = logits.gather(1, targets[:, None]).squeeze(1)
    third = (ranked[:, 2] + ranked[:, 3]) / 2
    return -(true_logit - target_logit) / (ranked[:, 0] - third + _DLR_EPSILON)


class AutoProjectedGradientDescent(EvasionAttack):
    """APGD under an L-inf budget with the cross-entropy or DLR loss, targeted or untargeted.

    Parameters
    ----------
    loss : {"ce", "dlr"}, default "ce"
        Loss to ascend: cross-entropy, or the difference of logits ratio.
    steps : int, default 100
        Gradient steps per restart, at least 1.
    restarts : int, default 1
        Runs from different random starts; samples fooled by one run skip
        the next ones. More than 1 needs ``random_start=True``.
    rho : float, default 0.75
        Fraction of the steps between two checkpoints that must increase the
        loss for the step size to be kept, in (0, 1].
    alpha : float, default 0.75
        Weight of the new projected step against the previous displacement
        (momentum weight ``1 - alpha``), in (0, 1].
    random_start : bool, default True
        Start from a uniformly random point of the eps-ball.
    seed : int, default 0
        Seed of the random starts, combined with each sample's global index
        and the restart number.

    Examples
    --------
    >>> import torch
    >>> from mlwarden.models import load_pretrained
    >>> model, _ = load_pretrained("lenet5")
    >>> attack = APGD(loss="dlr", steps=20)
    >>> result = attack(model, torch.rand(4, 1, 28, 28), torch.zeros(4, dtype=torch.int64), eps=0.05)
    >>> bool(result.linf.max() <= 0.05 + 1e-6)
    True
    """

    name = "apgd"
    norm = "linf"
    needs_eps = True
    profile = ThreatProfile(
        goal=Goal.INTEGRITY,
        stage=Stage.INFERENCE,
        knowledge=Knowledge.WHITE_BOX,
        frequency=Frequency.ITERATIVE,
        specificity=(Specificity.UNTARGETED, Specificity.TARGETED),
        scope=Scope.INDIVIDUAL,
        level=Level.IMAGE,
    )

    def __init__(
        self,
        *,
        loss: str = "ce",
        steps: int = 100,
        restarts: int = 1,
        rho: float = 0.75,
        alpha: float = 0.75,
        random_start: bool = True,
        seed: int = 0,
    ) -> None:
        owner = owner_of(self)
        self.loss = check_choice(loss, "loss", owner, LOSSES)
        # Name the attack as the command line does: apgd-ce, apgd-dlr.
        owner = owner.replace(self.name, f"apgd-{self.loss}", 1)
        self.steps = check_int(steps, "steps", owner, low=1)
        self.restarts = check_int(restarts, "restarts", owner, low=1)
        self.rho = check_real(rho, "rho", owner, low=0.0, high=1.0, low_inclusive=False)
        self.alpha = check_real(alpha, "alpha", owner, low=0.0, high=1.0, low_inclusive=False)
        self.random_start = check_bool(random_start, "random_start", owner)
        self.seed = check_int(seed, "seed", owner, low=0)
        if self.restarts > 1 and not self.random_start:
            raise ParameterError(
                f"{owner}: restarts={self.restarts} repeats the same deterministic run without a random start; "
                "set random_start=True or restarts=1",
                value=restarts,
            )
        # Adaptations of the loss already logged, so a run over many batches warns once.
        self._logged_adaptations: set[str] = set()

    def settings(self) -> dict[str, object]:
        """Return the constructor settings, as stored in ``results.json``."""
        settings = super().settings()
        settings.pop("logged_adaptations", None)
        return settings

    # --- loss ----------------------------------------------------------------------

    def _per_sample_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None
    ) -> torch.Tensor:
        """Return the loss each sample ascends, adapting DLR to models with few classes."""
        classes = logits.shape[1]
        if self.loss == "dlr" and classes >= (3 if targets is None else 4):
            return dlr_loss(logits, labels, targets)
        if self.loss == "dlr" and classes == 3:
            # With 3 classes the 3rd largest logit is often the target's or the label's own, and then the
            # ratio is constant (-1 when the label ranks first and the target last), so its gradient is zero.
            self._log_adaptation(
                "targeted-3",
                "%s: the targeted DLR loss needs at least 4 classes (it averages the 3rd and 4th largest logits), "
                "but the model has 3; using cross-entropy instead",
            )
        elif self.loss == "dlr":
            self._log_adaptation(
                "ce-fallback",
                f"%s: the DLR loss needs at least 3 classes, but the model has {classes}; using cross-entropy instead",
            )
        return attacker_loss(logits, labels, targets)

    def _log_adaptation(self, key: str, message: str) -> None:
        if key not in self._logged_adaptations:
            self._logged_adaptations.add(key)
            logger.warning(message, self.name)

    def _loss_and_gradient(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        targets: torch.Tensor | None,
        counter: CostCounter,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(logits, per-sample loss, gradient)`` at ``inputs``."""
        inputs = inputs.detach().requires_grad_(True)
        with torch.enable_grad(), fast_layers():
            logits = model(inputs)
            loss = self._per_sample_loss(logits, labels, targets)
            (gradient,) = torch.autograd.grad(loss.sum(), inputs)
        counter.gradients += inputs.shape[0]
        return logits.detach(), loss.detach(), gradient.detach()

    # --- geometry (overridden by the L2 variant) -------------------------------------

    def _ascent_step(self, gradient: torch.Tensor, step_size: torch.Tensor) -> torch.Tensor:
        """Return the step of per-sample length ``step_size`` along the sign of the gradient."""
        return step_size.view(-1, *([1] * (gradient.dim() - 1))) * gradient.sign()

    def _project(
        self, candidates: torch.Tensor, inputs: torch.Tensor, eps: float, bounds: tuple[float, float]
    ) -> torch.Tensor:
        """Return ``candidates`` projected onto the eps-ball around ``inputs`` and clipped to the bounds."""
        return project_linf(candidates, inputs, eps, bounds)

    # --- the attack ---------------------------------------------------------------------

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

        def search(rows: torch.Tensor, restart: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            sub_inputs = inputs[rows]
            start = sub_inputs.clone()
            if self.random_start and eps > 0:
                keys = restart_keys(indices[rows], restart)
                noise = random_start_noise(keys, inputs.shape[1:], self.norm or "linf", self.seed)
                start = self._project(sub_inputs + eps * noise, sub_inputs, eps, bounds)
            sub_targets = None if targets is None else targets[rows]
            return self._search(model, sub_inputs, labels[rows], sub_targets, start, eps, bounds, counter)

        return keep_worst_case(inputs, self.restarts, search)

    def _search(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        targets: torch.Tensor | None,
        start: torch.Tensor,
        eps: float,
        bounds: tuple[float, float],
        counter: CostCounter,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run one APGD search from ``start``.

        Returns the first adversarial iterate of each fooled sample, else its
        iterate of highest loss; that iterate's loss; and the fooled mask.
        """
        count = inputs.shape[0]
        output = start.clone()
        output_loss = torch.full((count,), float("-inf"))
        fooled_mask = torch.zeros(count, dtype=torch.bool)
        checkpoints = set(apgd_checkpoints(self.steps))

        # Per-sample state of the samples still searching; ``rows`` maps them to the batch.
        rows = torch.arange(count)
        state = {
            "x": start.clone(),
            "x_prev": start.clone(),
            "step_size": torch.full((count,), 2.0 * eps),
            "best_x": start.clone(),
            "best_loss": torch.full((count,), float("-inf")),
            "best_gradient": torch.zeros_like(start),
            # +inf, so that the first evaluation does not count as an increase.
            "previous_loss": torch.full((count,), float("inf")),
            "increases": torch.zeros(count),
            "checkpoint_best_loss": torch.full((count,), float("-inf")),
            "reduced_at_checkpoint": torch.zeros(count, dtype=torch.bool),
        }
        last_checkpoint = 0
        for step in range(self.steps + 1):
            sub_labels = labels[rows]
            sub_targets = None if targets is None else targets[rows]
            if step < self.steps:
                logits, loss, gradient = self._loss_and_gradient(model, state["x"], sub_labels, sub_targets, counter)
            else:
                # The last iterate needs no gradient, only a verdict.
                logits = predict_logits(model, state["x"], counter)
                loss = self._per_sample_loss(logits, sub_labels, sub_targets)
                gradient = state["best_gradient"]

            fooled = self._is_adversarial(logits.argmax(1), sub_labels, sub_targets)
            output[rows[fooled]] = state["x"][fooled]
            output_loss[rows[fooled]] = loss[fooled]
            fooled_mask[rows[fooled]] = True

            state["increases"] += (loss > state["previous_loss"]).float()
            state["previous_loss"] = loss
            improved = loss > state["best_loss"]
            state["best_x"][improved] = state["x"][improved]
            state["best_loss"][improved] = loss[improved]
            state["best_gradient"][improved] = gradient[improved]
            if step == 0:
                state["checkpoint_best_loss"] = loss.clone()

            if bool(fooled.any()):
                keep = ~fooled
                rows, gradient = rows[keep], gradient[keep]
                state = {key: value[keep] for key, value in state.items()}
                if len(rows) == 0:
                    break
            if step == self.steps:
                break

            if step in checkpoints:
                self._checkpoint(state, step - last_checkpoint)
                restored = state["reduced_at_checkpoint"]
                gradient = torch.where(_expand(restored, gradient), state["best_gradient"], gradient)
                last_checkpoint = step

            sub_inputs = inputs[rows]
            x, x_prev = state["x"], state["x_prev"]
            proposal = self._project(x + self._ascent_step(gradient, state["step_size"]), sub_inputs, eps, bounds)
            if step > 0:
                mixed = x + self.alpha * (proposal - x) + (1 - self.alpha) * (x - x_prev)
                proposal = self._project(mixed, sub_inputs, eps, bounds)
            state["x_prev"], state["x"] = x, proposal

        # Samples never fooled return their best point.
        output[rows] = state["best_x"]
        output_loss[rows] = state["best_loss"]
        return output, output_loss, fooled_mask

    def _checkpoint(self, state: dict[str, torch.Tensor], interval: int) -> None:
        """Halve the step size and restart from the best point where progress stopped (in place)."""
        oscillating = state["increases"] < self.rho * interval
        stalled = ~state["reduced_at_checkpoint"] & (state["best_loss"] <= state["checkpoint_best_loss"])
        reduce = oscillating | stalled
        state["step_size"] = torch.where(reduce, state["step_size"] / 2, state["step_size"])
        mask = _expand(reduce, state["x"])
        state["x"] = torch.where(mask, state["best_x"], state["x"])
        # Restarting from the best point drops the momentum of those samples.
        state["x_prev"] = torch.where(mask, state["best_x"], state["x_prev"])
        state["previous_loss"] = torch.where(reduce, state["best_loss"], state["previous_loss"])
        state["reduced_at_checkpoint"] = reduce
        state["checkpoint_best_loss"] = state["best_loss"].clone()
        state["increases"] = torch.zeros_like(state["increases"])


class L2AutoProjectedGradientDescent(AutoProjectedGradientDescent):
    """APGD under an L2 budget: normalized gradient steps, projection onto the L2 ball.

    Takes the same parameters as :class:`AutoProjectedGradientDescent`;
    ``eps`` is an L2 distance and the first step size is ``2 * eps``.
    """

    name = "apgd-l2"
    norm = "l2"

    def _ascent_step(self, gradient: torch.Tensor, step_size: torch.Tensor) -> torch.Tensor:
        return l2_step(gradient, step_size)

    def _project(
        self, candidates: torch.Tensor, inputs: torch.Tensor, eps: float, bounds: tuple[float, float]
    ) -> torch.Tensor:
        return project_l2(candidates, inputs, eps, bounds)


def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Return a per-sample mask shaped to broadcast over ``like``."""
    return mask.view(-1, *([1] * (like.dim() - 1)))


APGD = AutoProjectedGradientDescent
L2APGD = L2AutoProjectedGradientDescent

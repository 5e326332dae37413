"""Base class of evasion attacks: input checks, budgets, verification and bookkeeping.

A subclass implements :meth:`EvasionAttack._run` on the samples that still
need work, or, when its first pass through the model is at the inputs,
:meth:`EvasionAttack._run_at_input` on the whole batch. The base class owns
everything every attack must get right:

- it checks inputs, labels, targets and bounds, and rejects an untargeted
  attack given targets (or the reverse) instead of silently reinterpreting them;
- it returns already-adversarial inputs unchanged instead of perturbing them;
- it clips to the bounds and projects onto the budget of the original input;
- it recomputes the prediction of every returned input, so a reported success
  is always a real misclassification (or the target class);
- it puts the model in eval mode and restores each submodule's mode afterwards.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from .._validation import check_bounds, check_eps
from ..errors import ParameterError
from ..threat import Specificity, ThreatProfile
from .gradients import CostCounter, evaluation_mode, predict_logits
from .result import AttackCost, AttackResult, perturbation_norms

__all__ = ["EvasionAttack", "model_bounds"]

logger = logging.getLogger(__name__)

_BOUNDS_TOLERANCE = 1e-6


def model_bounds(model: nn.Module, bounds: Sequence[float] | None = None) -> tuple[float, float]:
    """Return the explicit bounds, else the model's ``bounds`` attribute, else ``(0.0, 1.0)``."""
    if bounds is None:
        bounds = getattr(model, "bounds", (0.0, 1.0))
    return check_bounds(tuple(bounds), "attack")


class EvasionAttack:
    """An evasion attack on a differentiable or query-only classifier.

    Class attributes
    ----------------
    name : str
        Lower-case name used by ``--attack`` and in reports.
    profile : ThreatProfile
        Taxonomy tags.
    norm : {"linf", "l2", "l0", None}
        Norm of the budget ``eps``; None for attacks without one.
    needs_eps : bool
        Whether a call must give ``eps``.
    starts_at_input : bool
        Whether the attack implements :meth:`_run_at_input` instead of
        :meth:`_run`: its first pass through the model, at the inputs
        themselves, then gives the clean prediction too, which saves a pass.
    """

    name: ClassVar[str] = "attack"
    profile: ClassVar[ThreatProfile]
    norm: ClassVar[str | None] = None
    needs_eps: ClassVar[bool] = False
    # For attacks without an eps budget: how their perturbation is bounded instead, for error messages.
    budget_hint: ClassVar[str] = ""
    # True for attacks whose first pass through the model is at the inputs (see _run_at_input).
    starts_at_input: ClassVar[bool] = False

    def settings(self) -> dict[str, object]:
        """Return the constructor settings, as stored in ``results.json``."""
        return {key.lstrip("_"): value for key, value in vars(self).items() if not key.startswith("__")}

    def __repr__(self) -> str:
        inner = ", ".join(f"{key}={value!r}" for key, value in self.settings().items())
        return f"{type(self).__name__}({inner})"

    # --- the call -----------------------------------------------------------------

    def __call__(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        eps: float | Sequence[float] | None = None,
        bounds: Sequence[float] | None = None,
        indices: torch.Tensor | None = None,
    ) -> AttackResult | list[AttackResult]:
        """Attack a batch.

        Parameters
        ----------
        model : nn.Module
            Classifier returning logits (N, num_classes) for inputs in ``bounds``.
        inputs : torch.Tensor
            float32 (N, ...) in ``bounds``.
        labels : torch.Tensor
            int64 (N,) true labels.
        targets : torch.Tensor, optional
            int64 (N,) target classes; makes the run targeted.
        eps : float or sequence of float
            Budget in the attack's norm; a sequence runs one attack per budget
            and returns a list of results.
        bounds : (low, high), optional
            Input range; default the model's ``bounds`` attribute or (0, 1).
        indices : torch.Tensor, optional
            int64 (N,) global sample ids, which seed per-sample randomness so
            that a sample's result does not depend on its batch.

        Returns
        -------
        AttackResult, or a list of them when ``eps`` is a sequence.
        """
        low, high = model_bounds(model, bounds)
        from_model = bounds is None and hasattr(model, "bounds")
        self._check_batch(inputs, labels, targets, low, high, from_model)
        if indices is None:
            indices = torch.arange(inputs.shape[0])
        if self.needs_eps and eps is None:
            raise ParameterError(f"{self.name}: eps is required; pass eps=0.1 or a list such as [0.05, 0.1]", value=eps)
        if eps is None:
            return self._attack_once(model, inputs, labels, targets, None, (low, high), indices)
        if self.norm not in ("linf", "l2"):
            raise ParameterError(
                f"{self.name}: eps sets an L-inf or L2 budget, which this attack does not take; drop eps"
                + (f" and {self.budget_hint}" if self.budget_hint else ""),
                value=eps,
            )
        budgets = check_eps(eps, self.name)
        if self.norm == "linf" and max(budgets) >= high - low:
            logger.warning(
                "%s: eps %g spans the whole input range [%g, %g], so every input of that range is within the "
                "budget; eps is in input units (for 8/255 pass 0.0314)",
                self.name,
                max(budgets),
                low,
                high,
            )
        results = [self._attack_once(model, inputs, labels, targets, budget, (low, high), indices) for budget in budgets]
        is_sweep = isinstance(eps, Sequence) and not isinstance(eps, str)
        return results if is_sweep else results[0]

    def _check_batch(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        targets: torch.Tensor | None,
        low: float,
        high: float,
        from_model: bool = False,
    ) -> None:
        owner = self.name
        if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point() or inputs.dim() < 2:
            raise ParameterError(
                f"{owner}: inputs must be a floating-point tensor of shape (N, ...), got "
                f"{type(inputs).__name__} {getattr(inputs, 'dtype', '')} {tuple(getattr(inputs, 'shape', ()))}",
                value=type(inputs),
            )
        if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.shape[0] != inputs.shape[0]:
            raise ParameterError(
                f"{owner}: labels must be an int64 tensor of shape ({inputs.shape[0]},), got "
                f"{tuple(getattr(labels, 'shape', ()))}",
                value=labels,
            )
        if labels.dtype != torch.int64:
            raise ParameterError(f"{owner}: labels must be int64, got {labels.dtype}", value=labels.dtype)
        smallest, largest = (float(value) for value in torch.aminmax(inputs)) if inputs.numel() else (low, high)
        if math.isnan(smallest) or math.isnan(largest):
            samples = inputs.flatten(1).isnan().any(1).nonzero().flatten()
            raise ParameterError(
                f"{owner}: inputs contain NaN values in {len(samples)} samples (the first is sample "
                f"{int(samples[0])}); drop those samples or replace their NaN values",
                value=int(samples[0]),
            )
        if smallest < low - _BOUNDS_TOLERANCE or largest > high + _BOUNDS_TOLERANCE:
            raise ParameterError(
                f"{owner}: inputs range from {smallest:g} to {largest:g}, outside the bounds "
                f"[{low:g}, {high:g}]"
                + (
                    " that the model's bounds attribute declares; make the model's bounds match the range of its "
                    "data, or scale the data to the bounds"
                    if from_model
                    else "; scale the inputs to the bounds, or pass bounds=(low, high) for the model's input range"
                ),
                value=(smallest, largest),
            )
        modes = self.profile.specificity
        if targets is not None:
            if Specificity.TARGETED not in modes:
                raise ParameterError(
                    f"{owner} is untargeted only, but targets were given; drop targets (they would otherwise be "
                    "mistaken for labels to avoid)",
                    value="targets",
                )
            if not isinstance(targets, torch.Tensor) or targets.shape != labels.shape or targets.dtype != torch.int64:
                raise ParameterError(
                    f"{owner}: targets must be an int64 tensor of shape {tuple(labels.shape)}, got "
                    f"{getattr(targets, 'dtype', type(targets).__name__)} {tuple(getattr(targets, 'shape', ()))}",
                    value=targets,
                )
        elif Specificity.UNTARGETED not in modes:
            raise ParameterError(f"{owner} is a targeted attack: pass targets (int64, one per sample)", value=None)
        self._check_mode(targets)

    def _check_mode(self, targets: torch.Tensor | None) -> None:
        """Reject a mode (targeted when ``targets`` is given) that the attack cannot run. The base accepts both."""

    def _attack_once(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        targets: torch.Tensor | None,
        eps: float | None,
        bounds: tuple[float, float],
        indices: torch.Tensor,
    ) -> AttackResult:
        start = time.perf_counter()
        counter = CostCounter()
        inputs = inputs.detach()
        with evaluation_mode(model):
            try:
                if self.starts_at_input:
                    # The attack's first pass, at the inputs, also gives the clean prediction.
                    found, clean_logits = self._run_at_input(
                        model, inputs, labels, targets, eps, bounds, indices, counter
                    )
                    counter.queries += inputs.shape[0]
                else:
                    clean_logits = predict_logits(model, inputs, counter)
            except (IndexError, RuntimeError) as error:
                _explain_dtype_mismatch(self.name, model, inputs, error)
                if self.starts_at_input:
                    # That pass's loss raises a bare IndexError for labels the model has no output for, so
                    # the class check runs first to raise a ParameterError that names the label.
                    self._check_classes(predict_logits(model, inputs[:1]).shape[-1], labels, targets)
                raise
            self._check_classes(clean_logits.shape[-1], labels, targets)
            clean_predictions = clean_logits.argmax(1)
            already = self._is_adversarial(clean_predictions, labels, targets)
            # A target equal to the label leaves nothing to attack: an attack could only move a misclassified
            # input back to its label.
            left_alone = already if targets is None else already | (targets == labels)
            adversarial = inputs.clone()
            active = (~left_alone).nonzero().flatten()
            queries_per_sample = None
            if len(active) and self.starts_at_input:
                adversarial[active] = self._enforce_budget(found[active].detach(), inputs[active], eps, bounds)
            elif len(active):
                sub_targets = None if targets is None else targets[active]
                found = self._run(
                    model, inputs[active], labels[active], sub_targets, eps, bounds, indices[active], counter
                )
                if isinstance(found, tuple):
                    found, sub_queries = found
                    queries_per_sample = torch.zeros(len(inputs), dtype=torch.int64)
                    queries_per_sample[active] = sub_queries
                adversarial[active] = self._enforce_budget(found.detach(), inputs[active], eps, bounds)
            # Samples left alone keep their clean prediction; only the attacked ones need a new pass.
            predictions = clean_predictions.clone()
            if len(active):
                predictions[active] = predict_logits(model, adversarial[active]).argmax(1)
        success = self._is_adversarial(predictions, labels, targets)
        norms = perturbation_norms(adversarial, inputs)
        cost = AttackCost(counter.gradients, counter.queries, time.perf_counter() - start)
        logger.debug(
            "%s: %d/%d attacked samples adversarial in %.2f s", self.name, int((success & ~already).sum()), len(active), cost.seconds
        )
        return AttackResult(
            attack=self.name,
            inputs=inputs,
            adversarial=adversarial,
            labels=labels,
            targets=targets,
            predictions=predictions,
            clean_predictions=clean_predictions,
            success=success,
            already_adversarial=already,
            l0=norms["l0"],
            l2=norms["l2"],
            linf=norms["linf"],
            eps=eps,
            cost=cost,
            queries_per_sample=queries_per_sample,
        )

    def _check_classes(self, classes: int, labels: torch.Tensor, targets: torch.Tensor | None) -> None:
        """Reject labels or targets the model has no output for; warn about targets equal to the label."""
        for role, values in (("labels", labels), ("targets", targets)):
            if values is None or not values.numel():
                continue
            wrong = (values < 0) | (values >= classes)
            if bool(wrong.any()):
                raise ParameterError(
                    f"{self.name}: {role} must be classes 0 to {classes - 1} (the model has {classes} outputs), "
                    f"got {int(values[wrong][0])}; check the {role} against the model's classes",
                    value=int(values[wrong][0]),
                )
        if targets is not None:
            same = int((targets == labels).sum())
            if same:
                logger.warning(
                    "%s: %d of %d targets equal the true label; those samples are left unchanged, and count as "
                    "on target only where the model already predicts their label",
                    self.name,
                    same,
                    len(labels),
                )

    @staticmethod
    def _is_adversarial(predictions: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        return predictions != labels if targets is None else predictions == targets

    def _enforce_budget(
        self, adversarial: torch.Tensor, inputs: torch.Tensor, eps: float | None, bounds: tuple[float, float]
    ) -> torch.Tensor:
        """Project onto the budget around the original input, then clip to the bounds."""
        # The steps work in place on fresh tensors, because on a small model each pass over the batch
        # costs a few percent of a forward pass.
        delta = adversarial - inputs
        if eps is not None and self.norm == "linf":
            delta.clamp_(-eps, eps)
        elif eps is not None and self.norm == "l2":
            norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
            factor = (eps / norms).clamp(max=1.0).view(-1, *([1] * (delta.dim() - 1)))
            delta.mul_(factor)
        adversarial = delta.add_(inputs).clamp_(bounds[0], bounds[1])
        if eps is not None and self.norm in ("linf", "l2"):
            adversarial = _round_into_budget(adversarial, inputs, eps, self.norm)
        return adversarial

    # --- for subclasses -------------------------------------------------------------

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
        """Return candidates for every sample and the logits of the inputs, for ``starts_at_input`` attacks.

        Called on the whole batch, samples already adversarial included: the
        base class keeps those unchanged and verifies the others.
        """
        raise NotImplementedError

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
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Return adversarial candidates for samples that are not yet adversarial.

        Runs in eval mode, under the model's bounds. May also return a
        per-sample query count as a second element. The base class verifies
        the candidates, so a subclass need not track success perfectly.
        """
        raise NotImplementedError


def _round_into_budget(adversarial: torch.Tensor, inputs: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Move elements whose float32 rounding put the perturbation just over ``eps`` back inside it.

    ``inputs + delta - inputs`` can exceed ``delta`` by one unit in the last
    place, so a projected L-inf perturbation of 0.1 can measure 0.10000002.
    Each pass moves the offending values one representable step toward the
    input (L-inf) or shrinks the offending perturbations by a relative 1e-6
    (L2). Bounds stay respected because both moves go toward the input.
    """
    for _ in range(4):
        delta = adversarial - inputs
        if norm == "linf":
            over = delta.abs_() > eps
            if not bool(over.any()):
                break
            adversarial = torch.where(over, torch.nextafter(adversarial, inputs), adversarial)
        else:
            norms = delta.flatten(1).norm(dim=1)
            over = norms > eps
            if not bool(over.any()):
                break
            shrink = torch.where(over, eps / norms.clamp_min(1e-12) * (1 - 1e-6), torch.ones_like(norms))
            adversarial = inputs + delta * shrink.view(-1, *([1] * (delta.dim() - 1)))
    return adversarial


def _explain_dtype_mismatch(owner: str, model: nn.Module, inputs: torch.Tensor, error: Exception) -> None:
    """Raise a :class:`ParameterError` naming the fix when the model failed on inputs of another dtype than its own."""
    parameter = next((p for p in model.parameters() if p.is_floating_point()), None)
    if parameter is not None and parameter.dtype != inputs.dtype:
        raise ParameterError(
            f"{owner}: the model failed on {inputs.dtype} inputs, and its parameters are {parameter.dtype}; convert "
            f"the inputs with inputs.to({parameter.dtype}) or the model with model.to({inputs.dtype})",
            value=str(inputs.dtype),
        ) from error

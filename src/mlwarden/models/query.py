"""Query models: a classifier seen only through its predictions, with every query counted.

A black-box attacker holds no weights, only a prediction API. A
:class:`QueryModel` is that API: it maps a batch of inputs to probabilities
(score-based access) or to the top label only (decision-based access), counts
the queries made through :meth:`QueryModel.predict_scores` and
:meth:`QueryModel.predict_labels`, and raises
:class:`~mlwarden.errors.BudgetExhausted` before a query that would exceed its
budget, so the budget is never overdrawn.

Adapters:

- :class:`ModuleQueryModel` wraps a ``torch.nn.Module`` that returns logits;
- :class:`CallableQueryModel` wraps any function from a batch to
  probabilities, logits or labels;
- :class:`~mlwarden.models.onnx_runtime.OnnxQueryModel` runs an ONNX file with
  ONNX Runtime.

A client of a remote prediction API (such as the mlwarden service) subclasses
:class:`QueryModel` and implements :meth:`QueryModel._predict`, which sends one
batch and returns what the API returns; counting, budgets and output checks
stay in the base class.

A query model is also an ``nn.Module`` whose forward returns log-probabilities
(one-hot rows for decision-based models), so the assessment runner and the
attack base class can compute clean accuracy and verify results with it.
Those forward calls are counted apart, in ``evaluations``, and never draw on
the budget: they are the evaluator's view, not the attacker's. The forward
raises :class:`~mlwarden.errors.ModelError` when asked for input gradients,
so a white-box attack on a query model fails with a message naming both.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_bool, check_bounds, check_choice, check_int, owner_of
from ..errors import BudgetExhausted, ModelError

__all__ = [
    "QueryModel",
    "ModuleQueryModel",
    "CallableQueryModel",
    "as_query_model",
    "OUTPUT_KINDS",
]

logger = logging.getLogger(__name__)

# What a backend returns: raw logits, probabilities (rows summing to 1), or int labels (N,).
OUTPUT_KINDS = ("logits", "probabilities", "labels")

# Rows of a probability output may deviate from a sum of 1 by this much (float32 softmax in other runtimes).
_PROBABILITY_TOLERANCE = 1e-3


class QueryModel(nn.Module):
    """A classifier reached only through queries, with a query counter and an optional hard budget.

    Parameters
    ----------
    output : {"logits", "probabilities", "labels"}
        What :meth:`_predict` returns. Logits are turned into probabilities
        with a softmax; labels make the model decision-based.
    labels_only : bool, default False
        Expose only the top label, even when the backend returns scores
        (a decision-based API in front of a score-based model).
    budget : int, optional
        Maximum number of queries (one per input row) over the model's life,
        counted through :meth:`predict_scores` and :meth:`predict_labels`.
        None means no limit.
    bounds : (low, high), default (0.0, 1.0)
        Range of the input values the model accepts.
    num_classes : int, optional
        Number of classes. Required for a label-returning backend; otherwise
        read from the first output.

    Attributes
    ----------
    queries : int
        Queries made so far by attackers, one per input row.
    evaluations : int
        Rows predicted through ``forward`` (clean accuracy, verification of
        results); never limited by the budget.
    """

    def __init__(
        self,
        *,
        output: str = "logits",
        labels_only: bool = False,
        budget: int | None = None,
        bounds: Sequence[float] = (0.0, 1.0),
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        owner = owner_of(self)
        self.output = check_choice(output, "output", owner, OUTPUT_KINDS)
        self.labels_only = check_bool(labels_only, "labels_only", owner) or self.output == "labels"
        self.budget = None if budget is None else check_int(budget, "budget", owner, low=0)
        self.bounds = check_bounds(tuple(bounds), owner)
        self.num_classes = None if num_classes is None else check_int(num_classes, "num_classes", owner, low=2)
        if self.output == "labels" and self.num_classes is None:
            raise ModelError(
                f"{owner}: a backend that returns labels needs num_classes, for example num_classes=10",
                value=None,
            )
        self.queries = 0
        self.evaluations = 0

    # --- what a backend implements ------------------------------------------------------

    def _predict(self, inputs: torch.Tensor) -> torch.Tensor | np.ndarray:
        """Return the backend's output for one batch: (N, C) logits or probabilities, or (N,) labels."""
        raise NotImplementedError

    def describe(self) -> str:
        """Return a short name of the backend for messages and logs."""
        return type(self).__name__

    # --- the attacker's view ------------------------------------------------------------

    @property
    def decision_based(self) -> bool:
        """Whether only the top label is visible."""
        return self.labels_only

    @property
    def remaining(self) -> int | None:
        """Queries left before the budget runs out; None without a budget."""
        return None if self.budget is None else self.budget - self.queries

    def reset(self) -> None:
        """Set both counters back to zero."""
        self.queries = 0
        self.evaluations = 0

    def predict_scores(self, inputs: torch.Tensor) -> torch.Tensor:
        """Return class probabilities, float32 (N, C), counting N queries.

        Raises
        ------
        ModelError
            The model is decision-based, so scores are not visible.
        BudgetExhausted
            The query would exceed the budget; nothing is counted or run.
        """
        if self.labels_only:
            raise ModelError(
                f"{self.describe()} returns labels only (decision-based), so its scores cannot be read; use a "
                "decision-based attack such as hsja, or a model adapter that returns probabilities or logits",
                value="scores",
            )
        self._charge(inputs)
        return self._scores(inputs)

    def predict_labels(self, inputs: torch.Tensor) -> torch.Tensor:
        """Return the top labels, int64 (N,), counting N queries.

        Raises
        ------
        BudgetExhausted
            The query would exceed the budget; nothing is counted or run.
        """
        self._charge(inputs)
        return self._labels(inputs)

    def _charge(self, inputs: torch.Tensor) -> None:
        if not isinstance(inputs, torch.Tensor) or inputs.dim() < 2:
            raise ModelError(
                f"{self.describe()}: queries take a tensor of shape (N, ...), got {type(inputs).__name__} "
                f"{tuple(getattr(inputs, 'shape', ()))}",
                value=type(inputs),
            )
        count = int(inputs.shape[0])
        if self.budget is not None and self.queries + count > self.budget:
            raise BudgetExhausted(
                f"{self.describe()}: query budget of {self.budget} exhausted ({self.queries} spent, {count} more "
                "requested); raise the budget or lower the attack's max_queries",
                value=self.budget,
            )
        self.queries += count

    # --- outputs --------------------------------------------------------------------------

    def _scores(self, inputs: torch.Tensor) -> torch.Tensor:
        raw = self._raw(inputs)
        if self.output == "labels":
            raise ModelError(f"{self.describe()} returns labels, not scores", value="scores")
        if self.output == "logits":
            return torch.softmax(raw.to(torch.float32), dim=1)
        probabilities = raw.to(torch.float32)
        sums = probabilities.sum(dim=1)
        if bool((probabilities < 0).any()) or bool(((sums - 1).abs() > _PROBABILITY_TOLERANCE).any()):
            raise ModelError(
                f"{self.describe()} was declared to return probabilities, but its rows sum to "
                f"{float(sums.min()):.4g}..{float(sums.max()):.4g} or hold negative values; pass output='logits'",
                value="probabilities",
            )
        return probabilities

    def _labels(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.output == "labels":
            return self._raw(inputs).to(torch.int64)
        return self._scores(inputs).argmax(dim=1)

    def _raw(self, inputs: torch.Tensor) -> torch.Tensor:
        """Run the backend and check the shape of its output."""
        with torch.no_grad():
            output = self._predict(inputs.detach())
        output = torch.as_tensor(output)
        count = inputs.shape[0]
        if self.output == "labels":
            if output.dim() == 2 and output.shape[1] == 1:
                output = output[:, 0]
            if tuple(output.shape) != (count,):
                raise ModelError(
                    f"{self.describe()} returned shape {tuple(output.shape)} for {count} inputs, expected labels "
                    f"of shape ({count},)",
                    value=tuple(output.shape),
                )
            return output
        if output.dim() != 2 or output.shape[0] != count:
            raise ModelError(
                f"{self.describe()} returned shape {tuple(output.shape)} for {count} inputs, expected "
                f"({count}, num_classes) {self.output}",
                value=tuple(output.shape),
            )
        if self.num_classes is None:
            self.num_classes = int(output.shape[1])
        elif output.shape[1] != self.num_classes:
            raise ModelError(
                f"{self.describe()} returned {output.shape[1]} classes, expected num_classes={self.num_classes}",
                value=int(output.shape[1]),
            )
        return output

    # --- the evaluator's view: nn.Module forward ----------------------------------------

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Return log-probabilities (N, C), or one-hot rows for a decision-based model.

        Counted in ``evaluations``, not in ``queries``, and never limited by
        the budget.

        Raises
        ------
        ModelError
            The inputs require a gradient: query models have none.
        """
        if torch.is_grad_enabled() and inputs.requires_grad:
            raise ModelError(_no_gradient_message(self.describe()), value=self.describe())
        self.evaluations += int(inputs.shape[0])
        if self.labels_only:
            # Reading the labels sets num_classes for backends that return scores.
            labels = self._labels(inputs)
            assert self.num_classes is not None
            return F.one_hot(labels, self.num_classes).to(torch.float32)
        return self._scores(inputs).clamp_min(1e-30).log()


def _no_gradient_message(model_name: str) -> str:
    attack = _calling_attack_name()
    who = f"attack {attack!r} is white-box and needs" if attack else "a white-box attack needs"
    return (
        f"{who} input gradients, but {model_name} is a query model that returns predictions only; use a "
        "black-box attack (square, simba, hsja, onepixel) or transfer, which attacks a surrogate model"
    )


def _calling_attack_name() -> str | None:
    """Return the name of the attack object up the call stack, for the error message only."""
    # NOTE: this walks at most 16 frames looking for a local `self` that is an mlwarden attack; it
    # shapes the message and nothing else, so a miss only makes the message less specific.
    frame: FrameType | None = sys._getframe(1)
    for _ in range(16):
        if frame is None:
            return None
        candidate = frame.f_locals.get("self")
        name = getattr(candidate, "name", None)
        if type(candidate).__module__.startswith("mlwarden.attacks") and isinstance(name, str):
            return name
        frame = frame.f_back
    return None


class ModuleQueryModel(QueryModel):
    """A ``torch.nn.Module`` seen through queries only.

    Parameters
    ----------
    model : nn.Module
        Classifier returning logits (or probabilities, with
        ``output="probabilities"``) for inputs in ``bounds``; it is run in
        eval mode without gradients.
    output, labels_only, budget, num_classes
        See :class:`QueryModel`.
    bounds : (low, high), optional
        Default: the model's ``bounds`` attribute, else (0.0, 1.0).

    Examples
    --------
    >>> import torch
    >>> from mlwarden.models import load_pretrained
    >>> lenet, _ = load_pretrained("lenet5")
    >>> api = ModuleQueryModel(lenet, labels_only=True, budget=100)
    >>> api.predict_labels(torch.rand(8, 1, 28, 28)).shape
    torch.Size([8])
    >>> api.remaining
    92
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        output: str = "logits",
        labels_only: bool = False,
        budget: int | None = None,
        bounds: Sequence[float] | None = None,
        num_classes: int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ModelError(f"ModuleQueryModel wraps a torch.nn.Module, got {type(model).__name__}", value=type(model))
        super().__init__(
            output=output,
            labels_only=labels_only,
            budget=budget,
            bounds=tuple(bounds if bounds is not None else getattr(model, "bounds", (0.0, 1.0))),
            num_classes=num_classes,
        )
        self.model = model

    def describe(self) -> str:
        return f"query model over {type(self.model).__name__}"

    def _predict(self, inputs: torch.Tensor) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            return self.model(inputs)
        finally:
            self.model.train(was_training)


class CallableQueryModel(QueryModel):
    """Any function from a batch of inputs to predictions, seen through queries.

    Parameters
    ----------
    function : callable
        Takes a float32 tensor (N, ...) in ``bounds`` and returns a tensor or
        NumPy array: (N, C) probabilities or logits, or (N,) labels, as
        ``output`` says.
    output : {"probabilities", "logits", "labels"}, default "probabilities"
    labels_only, budget, bounds, num_classes
        See :class:`QueryModel`; ``num_classes`` is required when
        ``output="labels"``.

    Examples
    --------
    >>> import torch
    >>> api = CallableQueryModel(lambda x: (x.flatten(1).mean(1) > 0.5).long(), output="labels", num_classes=2)
    >>> api.predict_labels(torch.ones(3, 1, 2, 2)).tolist()
    [1, 1, 1]
    """

    def __init__(
        self,
        function: Callable[[torch.Tensor], Any],
        *,
        output: str = "probabilities",
        labels_only: bool = False,
        budget: int | None = None,
        bounds: Sequence[float] = (0.0, 1.0),
        num_classes: int | None = None,
    ) -> None:
        if not callable(function):
            raise ModelError(f"CallableQueryModel wraps a callable, got {type(function).__name__}", value=type(function))
        super().__init__(output=output, labels_only=labels_only, budget=budget, bounds=bounds, num_classes=num_classes)
        self.function = function

    def describe(self) -> str:
        name = getattr(self.function, "__qualname__", type(self.function).__name__)
        return f"query model over {name}"

    def _predict(self, inputs: torch.Tensor) -> torch.Tensor | np.ndarray:
        return self.function(inputs)


def as_query_model(model: nn.Module | QueryModel) -> QueryModel:
    """Return ``model`` itself when it is a query model, else a :class:`ModuleQueryModel` around it.

    Raises
    ------
    ModelError
        ``model`` is neither a query model nor an ``nn.Module``.
    """
    if isinstance(model, QueryModel):
        return model
    if isinstance(model, nn.Module):
        return ModuleQueryModel(model)
    raise ModelError(
        f"expected a torch.nn.Module or a QueryModel, got {type(model).__name__}; wrap a plain function with "
        "CallableQueryModel",
        value=type(model),
    )

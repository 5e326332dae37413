"""Poisoning of tabular data against scikit-learn models, without gradients.

- :class:`MarginLabelFlip` asks the victim model (a clone fitted on the
  clean data) which samples it is most sure about, and flips exactly those
  to the class it finds least likely. Each flip then costs the model the
  largest loss, so accuracy drops faster than with random flips.
- :class:`SearchLabelFlip` treats the victim's training as a black box: it
  starts from the margin flips and hill-climbs on the set of flipped
  samples, retraining a clone for every candidate and keeping the set that
  gives the lowest accuracy on held-out data.
- :class:`TabularBackdoor` sets a few feature columns to fixed values (the
  trigger) on a fraction of the rows and relabels them as a target class.

References: B. Biggio, B. Nelson, P. Laskov, "Support vector machines under
adversarial label noise", ACML 2011 (flips chosen against the learner);
H. Xiao, H. Xiao, C. Eckert, "Adversarial label flips attack on support
vector machines", ECAI 2012.

Limitations: the search retrains the estimator ``1 + rounds * candidates``
times, which is cheap for linear models and small sets but not for large
ensembles. Both flip attacks need the estimator to have ``predict_proba``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..._validation import check_int, check_real, owner_of
from ...errors import ParameterError
from ...threat import Frequency, Goal, Knowledge, Scope, Specificity, Stage, ThreatProfile
from .base import Array, PoisoningAttack, PoisonResult, count_for_rate, labels_to_numpy

__all__ = ["MarginLabelFlip", "SearchLabelFlip", "TabularBackdoor", "default_estimator"]

logger = logging.getLogger(__name__)


def default_estimator() -> Any:
    """Return the victim used when none is given: standardization then logistic regression."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))


def _check_table(inputs: Array, owner: str) -> np.ndarray:
    array = inputs.detach().cpu().numpy() if hasattr(inputs, "detach") else inputs
    if not isinstance(array, np.ndarray) or array.ndim != 2:
        raise ParameterError(
            f"{owner}: tabular inputs must be a 2-D array (rows, features), got {type(inputs).__name__} "
            f"{tuple(getattr(inputs, 'shape', ()))}",
            value=tuple(getattr(inputs, "shape", ())),
        )
    return np.asarray(array, dtype=np.float64)


def _check_estimator(estimator: Any, owner: str) -> Any:
    estimator = default_estimator() if estimator is None else estimator
    if not (hasattr(estimator, "fit") and hasattr(estimator, "predict_proba")):
        raise ParameterError(
            f"{owner}: estimator must be a scikit-learn classifier with fit and predict_proba, got "
            f"{type(estimator).__name__}; for SVC pass probability=True",
            value=type(estimator).__name__,
        )
    return estimator


def _probabilities(estimator: Any, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Fit a clone on (features, labels) and return its probabilities over all classes 0..K-1."""
    model = clone(estimator).fit(features, labels)
    probabilities = np.zeros((len(features), int(labels.max()) + 1))
    probabilities[:, model.classes_] = model.predict_proba(features)
    return probabilities


class MarginLabelFlip(PoisoningAttack):
    """Flip the labels the victim is most confident about to the class it finds least likely.

    Parameters
    ----------
    rate : float
        Fraction of the rows to flip, in [0, 1].
    estimator : scikit-learn classifier, optional
        The victim (or the attacker's guess of it), unfitted; it is cloned.
        Default standardization then logistic regression.
    seed : int, default 0
        Breaks ties between equally confident rows.
    """

    name = "margin-flip"
    profile = ThreatProfile(
        Goal.AVAILABILITY, Stage.COLLECTION, Knowledge.GRAY_BOX, Frequency.ONE_SHOT, (Specificity.UNTARGETED,), Scope.UNIVERSAL
    )

    def __init__(self, *, rate: float, estimator: Any = None, seed: int = 0) -> None:
        super().__init__(rate=rate, seed=seed)
        self._estimator = _check_estimator(estimator, type(self).__name__)
        self.estimator = type(self._estimator).__name__

    def poison(self, inputs: Array, labels: Array) -> PoisonResult:
        """Return the table with the flipped labels; ``indices`` are the flipped rows."""
        owner = owner_of(self)
        table = _check_table(inputs, owner)
        original = labels_to_numpy(labels, owner, len(table))
        margin, least_likely = self._margin(table, original)
        chosen = np.sort(self._select(margin, np.arange(len(table)), count_for_rate(self.rate, len(table))))
        poisoned = original.copy()
        poisoned[chosen] = least_likely[chosen]
        return self._result(inputs, poisoned, labels, chosen, original)

    def _margin(self, table: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return each row's margin (own probability minus the lowest other one) and its least likely class."""
        probabilities = _probabilities(self._estimator, table, labels)
        rows = np.arange(len(labels))
        own = probabilities[rows, labels]
        probabilities[rows, labels] = np.inf
        return own - probabilities.min(1), probabilities.argmin(1)

    def _select(self, margin: np.ndarray, candidates: np.ndarray, count: int) -> np.ndarray:
        """Return the ``count`` candidate rows with the largest margin."""
        if count > len(candidates):
            raise ParameterError(
                f"{type(self).__name__}: rate {self.rate:g} needs {count} rows but only {len(candidates)} may be flipped",
                value=self.rate,
            )
        # Random keys break ties, so equally confident rows are picked by the seed and not by position.
        tie_break = self._generator(salt=2).random(len(margin))
        order = np.lexsort((tie_break[candidates], -margin[candidates]))
        return candidates[order[:count]].astype(np.int64)


class SearchLabelFlip(MarginLabelFlip):
    """Hill-climb on the set of flipped rows, retraining the victim for every candidate set.

    Parameters
    ----------
    rate : float
        Fraction of the rows to flip, in [0, 1].
    estimator : scikit-learn classifier, optional
        The victim, unfitted; default standardization then logistic regression.
    rounds : int, default 10
        Search rounds.
    candidates : int, default 8
        Candidate flip sets tried per round.
    swap_fraction : float, default 0.2
        Fraction of the flipped rows replaced by other rows in each candidate.
    validation_fraction : float, default 0.3
        Fraction of the rows held out (never flipped) to measure the victim's
        accuracy, in (0, 1).
    seed : int, default 0
    """

    name = "search-flip"
    profile = ThreatProfile(
        Goal.AVAILABILITY, Stage.COLLECTION, Knowledge.GRAY_BOX, Frequency.ITERATIVE, (Specificity.UNTARGETED,), Scope.UNIVERSAL
    )

    def __init__(
        self,
        *,
        rate: float,
        estimator: Any = None,
        rounds: int = 10,
        candidates: int = 8,
        swap_fraction: float = 0.2,
        validation_fraction: float = 0.3,
        seed: int = 0,
    ) -> None:
        super().__init__(rate=rate, estimator=estimator, seed=seed)
        owner = owner_of(self)
        self.rounds = check_int(rounds, "rounds", owner, low=0)
        self.candidates = check_int(candidates, "candidates", owner, low=1)
        self.swap_fraction = check_real(swap_fraction, "swap_fraction", owner, low=0.0, high=1.0, low_inclusive=False)
        self.validation_fraction = check_real(
            validation_fraction, "validation_fraction", owner, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False
        )
        self.search_history_: list[float] = []

    def poison(self, inputs: Array, labels: Array) -> PoisonResult:
        """Return the table with the flips that hurt held-out accuracy most; ``search_history_`` records each round."""
        owner = owner_of(self)
        table = _check_table(inputs, owner)
        original = labels_to_numpy(labels, owner, len(table))
        generator = self._generator(salt=3)
        order = generator.permutation(len(table))
        held_out = np.sort(order[: int(round(self.validation_fraction * len(table)))])
        flippable = np.sort(order[len(held_out) :])
        count = count_for_rate(self.rate, len(table))
        margin, least_likely = self._margin(table, original)
        chosen = self._select(margin, flippable, count)

        def held_out_accuracy(flipped: np.ndarray) -> float:
            poisoned = original.copy()
            poisoned[flipped] = least_likely[flipped]
            training = np.setdiff1d(np.arange(len(table)), held_out)
            model = clone(self._estimator).fit(table[training], poisoned[training])
            return float((model.predict(table[held_out]) == original[held_out]).mean())

        best = chosen
        best_accuracy = held_out_accuracy(best)
        self.search_history_ = [best_accuracy]
        swaps = max(1, int(round(self.swap_fraction * count))) if count else 0
        for _ in range(self.rounds if count and count < len(flippable) else 0):
            round_best, round_accuracy = best, best_accuracy
            outside = np.setdiff1d(flippable, best)
            for _ in range(self.candidates):
                leaving = generator.choice(len(best), size=min(swaps, len(best)), replace=False)
                entering = generator.choice(outside, size=len(leaving), replace=False)
                candidate = best.copy()
                candidate[leaving] = entering
                accuracy = held_out_accuracy(candidate)
                if accuracy < round_accuracy:
                    round_best, round_accuracy = candidate, accuracy
            best, best_accuracy = round_best, round_accuracy
            self.search_history_.append(best_accuracy)
        logger.info("search-flip: held-out accuracy %.4f after %d rounds", best_accuracy, len(self.search_history_) - 1)
        best = np.sort(best)
        poisoned = original.copy()
        poisoned[best] = least_likely[best]
        return self._result(inputs, poisoned, labels, best, original)


class TabularBackdoor(PoisoningAttack):
    """Set trigger columns to fixed values on a fraction of the rows and relabel them as ``target_class``.

    Parameters
    ----------
    rate : float
        Fraction of the rows to poison, in [0, 1].
    target_class : int
    columns : sequence of int
        Indices of the feature columns that carry the trigger.
    values : sequence of float, optional
        Trigger value of each column; default each column's maximum in the
        poisoned data, so the trigger stays within the observed range.
    seed : int, default 0
    """

    name = "tabular-backdoor"
    profile = ThreatProfile(
        Goal.INTEGRITY, Stage.COLLECTION, Knowledge.GRAY_BOX, Frequency.ONE_SHOT, (Specificity.TARGETED,), Scope.UNIVERSAL
    )

    def __init__(
        self,
        *,
        rate: float,
        target_class: int,
        columns: Sequence[int],
        values: Sequence[float] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(rate=rate, seed=seed)
        owner = owner_of(self)
        self.target_class = check_int(target_class, "target_class", owner, low=0)
        if isinstance(columns, (str, bytes)) or not isinstance(columns, Sequence) or len(columns) == 0:
            raise ParameterError(f"{owner}: columns must be a non-empty list of column indices, got {columns!r}", value=columns)
        self.columns = [check_int(column, "columns[]", owner, low=0) for column in columns]
        if values is not None and (not isinstance(values, Sequence) or len(values) != len(self.columns)):
            raise ParameterError(
                f"{owner}: values must give one number per column ({len(self.columns)}), got {values!r}", value=values
            )
        self.values = None if values is None else [check_real(value, "values[]", owner) for value in values]

    def fit_trigger(self, inputs: np.ndarray) -> TabularBackdoor:
        """Set ``values`` from the columns' maxima in ``inputs`` when none were given; return ``self``."""
        table = _check_table(inputs, type(self).__name__)
        self._check_columns(table)
        if self.values is None:
            self.values = [float(table[:, column].max()) for column in self.columns]
        return self

    def apply_trigger(self, inputs: np.ndarray) -> np.ndarray:
        """Return a copy of the rows with the trigger columns set to the trigger values."""
        if self.values is None:
            raise ParameterError(
                f"{type(self).__name__}: the trigger values are not set; call poison or fit_trigger first", value=None
            )
        table = _check_table(inputs, type(self).__name__).copy()
        self._check_columns(table)
        table[:, self.columns] = np.asarray(self.values)
        return table

    def poison(self, inputs: Array, labels: Array) -> PoisonResult:
        """Return the table with triggered, relabeled rows; ``indices`` are the poisoned rows."""
        owner = owner_of(self)
        table = _check_table(inputs, owner)
        original = labels_to_numpy(labels, owner, len(table))
        self.fit_trigger(table)
        chosen = self._choose(np.flatnonzero(original != self.target_class), len(table), f"rows outside class {self.target_class}")
        poisoned = table.copy()
        poisoned[chosen] = self.apply_trigger(table[chosen])
        poisoned_labels = original.copy()
        poisoned_labels[chosen] = self.target_class
        return self._result(poisoned, poisoned_labels, labels, chosen, original)

    def _check_columns(self, table: np.ndarray) -> None:
        if max(self.columns) >= table.shape[1]:
            raise ParameterError(
                f"{type(self).__name__}: column {max(self.columns)} is out of range for {table.shape[1]} features",
                value=max(self.columns),
            )

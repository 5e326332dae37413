"""Base class and result of poisoning attacks: training data altered before the model learns from it.

A poisoning attack takes a training set and returns a copy in which some
samples were changed (a label flipped, a trigger stamped, pixels nudged),
together with the indices of the changed samples, so that detectors can be
scored against the truth. Inputs and labels may be torch tensors (images,
NCHW) or NumPy arrays (tabular data); the result keeps the caller's type.

Rates are always a fraction of the whole training set, so that "5% poison"
means the same number of altered samples for every attack.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

import numpy as np
import torch

from ..._validation import check_int, check_real, owner_of
from ...errors import ParameterError
from ...threat import ThreatProfile

__all__ = [
    "PoisoningAttack",
    "PoisonResult",
    "Array",
    "labels_to_numpy",
    "like_labels",
    "count_for_rate",
    "infer_num_classes",
]

logger = logging.getLogger(__name__)

Array = Union[torch.Tensor, np.ndarray]


def labels_to_numpy(labels: Array, owner: str, count: int | None = None) -> np.ndarray:
    """Return labels as a new int64 NumPy vector after checking their shape and type."""
    if isinstance(labels, torch.Tensor):
        array = labels.detach().cpu().numpy()
    elif isinstance(labels, np.ndarray):
        array = labels
    else:
        raise ParameterError(
            f"{owner}: labels must be a torch tensor or NumPy array, got {type(labels).__name__}", value=type(labels)
        )
    if array.ndim != 1 or (count is not None and array.shape[0] != count):
        expected = f"({count},)" if count is not None else "(N,)"
        raise ParameterError(f"{owner}: labels must have shape {expected}, got {array.shape}", value=array.shape)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ParameterError(f"{owner}: labels must be integers, got dtype {array.dtype}", value=array.dtype)
    if array.size and array.min() < 0:
        raise ParameterError(f"{owner}: labels must be class indices >= 0, got {int(array.min())}", value=int(array.min()))
    return array.astype(np.int64, copy=True)


def like_labels(values: np.ndarray, template: Array) -> Array:
    """Return int64 ``values`` in the container type of ``template`` (tensor or array)."""
    if isinstance(template, torch.Tensor):
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.int64))
    return values.astype(template.dtype if np.issubdtype(template.dtype, np.integer) else np.int64)


def count_for_rate(rate: float, total: int) -> int:
    """Return the number of samples that a poison ``rate`` of ``total`` samples alters (rounded)."""
    return int(round(rate * total))


@dataclass
class PoisonResult:
    """A poisoned training set and what the attack changed.

    Attributes
    ----------
    inputs : torch.Tensor or numpy.ndarray
        The poisoned inputs, same shape and type as the clean ones. Attacks
        that change only labels return the caller's inputs object unchanged.
    labels : torch.Tensor or numpy.ndarray
        The poisoned labels, int64 (N,).
    indices : numpy.ndarray
        int64, sorted: positions of the poisoned samples in ``inputs``.
    original_labels : numpy.ndarray
        int64 (N,): the labels before the attack.
    attack : str
        Name of the attack.
    settings : dict
        The attack's settings, as stored in reports.
    """

    inputs: Array
    labels: Array
    indices: np.ndarray
    original_labels: np.ndarray
    attack: str
    settings: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.original_labels.shape[0])

    @property
    def rate(self) -> float:
        """Fraction of samples poisoned."""
        return len(self.indices) / max(len(self), 1)

    def mask(self) -> np.ndarray:
        """Return a bool vector (N,), True at the poisoned samples."""
        mask = np.zeros(len(self), dtype=bool)
        mask[self.indices] = True
        return mask

    def flipped(self) -> np.ndarray:
        """Return the indices whose label differs from the original one."""
        return np.flatnonzero(labels_to_numpy(self.labels, self.attack) != self.original_labels)


class PoisoningAttack:
    """A poisoning attack on a training set.

    Subclasses set ``name`` and ``profile``, validate their settings in a
    keyword-only constructor (``rate`` and ``seed`` are shared), and
    implement :meth:`poison`.

    Parameters
    ----------
    rate : float
        Fraction of the whole training set to poison, in [0, 1].
    seed : int, default 0
        Seed of every random choice; the same seed gives the same poison.
    """

    name: ClassVar[str] = "poisoning"
    profile: ClassVar[ThreatProfile]

    def __init__(self, *, rate: float, seed: int = 0) -> None:
        owner = owner_of(self)
        self.rate = check_real(rate, "rate", owner, low=0.0, high=1.0)
        self.seed = check_int(seed, "seed", owner)

    def settings(self) -> dict[str, Any]:
        """Return the constructor settings, as stored in ``results.json``."""
        return {key: value for key, value in vars(self).items() if not key.startswith("_")}

    def __repr__(self) -> str:
        inner = ", ".join(f"{key}={value!r}" for key, value in self.settings().items())
        return f"{type(self).__name__}({inner})"

    def poison(self, inputs: Array, labels: Array) -> PoisonResult:
        """Return the poisoned copy of ``(inputs, labels)`` and the poisoned indices."""
        raise NotImplementedError

    # --- helpers for subclasses -------------------------------------------------------

    def _generator(self, salt: int = 0) -> np.random.Generator:
        """Return a NumPy generator from the attack's seed and a salt that names the use."""
        return np.random.default_rng([self.seed, salt])

    def _choose(self, candidates: np.ndarray, total: int, what: str) -> np.ndarray:
        """Pick ``rate * total`` of ``candidates`` at random and return them sorted.

        Raises
        ------
        ParameterError
            There are fewer candidates than the rate needs.
        """
        count = count_for_rate(self.rate, total)
        if count > len(candidates):
            raise ParameterError(
                f"{type(self).__name__}: rate {self.rate:g} needs {count} {what}, but the data has only "
                f"{len(candidates)}; lower the rate or widen the choice of samples",
                value=self.rate,
            )
        chosen = self._generator().choice(candidates, size=count, replace=False)
        return np.sort(chosen.astype(np.int64))

    def _check_inputs(self, inputs: Array) -> int:
        owner = owner_of(self)
        if not isinstance(inputs, (torch.Tensor, np.ndarray)) or inputs.ndim < 2:
            raise ParameterError(
                f"{owner}: inputs must be a tensor or array of shape (N, ...), got {type(inputs).__name__} "
                f"{tuple(getattr(inputs, 'shape', ()))}",
                value=type(inputs),
            )
        return int(inputs.shape[0])

    def _result(self, inputs: Array, labels: np.ndarray, template: Array, indices: np.ndarray, original: np.ndarray) -> PoisonResult:
        logger.info("%s poisoned %d of %d samples", self.name, len(indices), len(original))
        return PoisonResult(inputs, like_labels(labels, template), indices, original, self.name, self.settings())


def infer_num_classes(labels: np.ndarray, num_classes: int | None, owner: str) -> int:
    """Return ``num_classes``, or one more than the largest label (at least 2), after checking the labels fit."""
    largest = int(labels.max()) if labels.size else 0
    if num_classes is None:
        return max(largest + 1, 2)
    if largest >= num_classes:
        raise ParameterError(
            f"{owner}: label {largest} is out of range for num_classes={num_classes}; pass the true number of classes",
            value=num_classes,
        )
    return num_classes

"""Label flipping: the attacker changes labels and leaves the inputs alone.

- :class:`RandomLabelFlip` gives a fraction of the samples a wrong label
  drawn uniformly from the other classes (an availability attack: it lowers
  accuracy everywhere, like heavy label noise).
- :class:`TargetedLabelFlip` relabels samples of a source class (or of every
  class) as one target class, so that the model learns to confuse them.

Both work on image tensors and on tabular NumPy arrays alike, since only the
labels change.

Reference: B. Biggio, B. Nelson, P. Laskov, "Support vector machines under
adversarial label noise", ACML 2011.

Limitations: random flips are the weakest label attack per flipped sample;
see :mod:`mlwarden.attacks.poisoning.tabular` for flips chosen with the
victim model.
"""

from __future__ import annotations

import numpy as np

from ..._validation import check_int, owner_of
from ...errors import ParameterError
from ...threat import Frequency, Goal, Knowledge, Scope, Specificity, Stage, ThreatProfile
from .base import Array, PoisoningAttack, PoisonResult, infer_num_classes, labels_to_numpy

__all__ = ["RandomLabelFlip", "TargetedLabelFlip"]


class RandomLabelFlip(PoisoningAttack):
    """Flip the labels of a random fraction of the samples to random other classes.

    Parameters
    ----------
    rate : float
        Fraction of the training set to flip, in [0, 1].
    num_classes : int, optional
        Number of classes; default one more than the largest label.
    seed : int, default 0

    Example
    -------
    >>> import numpy as np
    >>> result = RandomLabelFlip(rate=0.1).poison(np.zeros((100, 3)), np.arange(100) % 10)
    >>> len(result.indices), bool((result.labels[result.indices] != result.original_labels[result.indices]).all())
    (10, True)
    """

    name = "label-flip"
    # The attacker needs no access to the model, only to the label set; the closest tag is decision-based.
    profile = ThreatProfile(
        Goal.AVAILABILITY, Stage.COLLECTION, Knowledge.DECISION_BASED, Frequency.ONE_SHOT, (Specificity.UNTARGETED,), Scope.UNIVERSAL
    )

    def __init__(self, *, rate: float, num_classes: int | None = None, seed: int = 0) -> None:
        super().__init__(rate=rate, seed=seed)
        self.num_classes = None if num_classes is None else check_int(num_classes, "num_classes", type(self).__name__, low=2)

    def poison(self, inputs: Array, labels: Array) -> PoisonResult:
        """Return the set with flipped labels; ``indices`` are the flipped samples."""
        total = self._check_inputs(inputs)
        original = labels_to_numpy(labels, type(self).__name__, total)
        classes = infer_num_classes(original, self.num_classes, type(self).__name__)
        chosen = self._choose(np.arange(total), total, "samples")
        # A shift in [1, classes) modulo the class count never lands on the true label.
        shift = self._generator(salt=1).integers(1, classes, size=len(chosen))
        poisoned = original.copy()
        poisoned[chosen] = (original[chosen] + shift) % classes
        return self._result(inputs, poisoned, labels, chosen, original)


class TargetedLabelFlip(PoisoningAttack):
    """Relabel samples of a source class (or of any other class) as the target class.

    Parameters
    ----------
    rate : float
        Fraction of the whole training set to relabel, in [0, 1].
    target_class : int
        The label the chosen samples get.
    source_class : int, optional
        Only samples of this class are relabeled; default any class other than the target.
    seed : int, default 0

    Raises
    ------
    ParameterError
        ``source_class`` equals ``target_class``, or the source class has
        fewer samples than the rate needs.
    """

    name = "targeted-label-flip"
    profile = ThreatProfile(
        Goal.INTEGRITY, Stage.COLLECTION, Knowledge.DECISION_BASED, Frequency.ONE_SHOT, (Specificity.TARGETED,), Scope.UNIVERSAL
    )

    def __init__(self, *, rate: float, target_class: int, source_class: int | None = None, seed: int = 0) -> None:
        super().__init__(rate=rate, seed=seed)
        owner = owner_of(self)
        self.target_class = check_int(target_class, "target_class", owner, low=0)
        self.source_class = None if source_class is None else check_int(source_class, "source_class", owner, low=0)
        if self.source_class == self.target_class:
            raise ParameterError(
                f"{owner}: source_class and target_class are both {self.target_class}; pick two different classes",
                value=self.source_class,
            )

    def poison(self, inputs: Array, labels: Array) -> PoisonResult:
        """Return the set with the chosen labels set to ``target_class``."""
        total = self._check_inputs(inputs)
        original = labels_to_numpy(labels, type(self).__name__, total)
        if self.source_class is None:
            candidates = np.flatnonzero(original != self.target_class)
            what = f"samples outside class {self.target_class}"
        else:
            candidates = np.flatnonzero(original == self.source_class)
            what = f"samples of class {self.source_class}"
        chosen = self._choose(candidates, total, what)
        poisoned = original.copy()
        poisoned[chosen] = self.target_class
        return self._result(inputs, poisoned, labels, chosen, original)

"""Per-key extraction monitor: a PRADA-style test of the distances between a key's queries.

Reference: M. Juuti, S. Szyller, S. Marchal, N. Asokan, "PRADA: protecting
against DNN model stealing attacks", IEEE EuroS&P 2019.

For every query of a key, the monitor takes the class that the model
predicted. It measures the smallest L2 distance (in input space) from the
query to the key's earlier queries of that class kept in a growing set. The
query joins the growing set when that distance exceeds the class's
threshold, the mean minus the standard deviation of the distances that
admitted earlier members (never decreasing). Natural images give a smooth,
unimodal distribution of these distances; the synthetic queries of
extraction attacks (small steps from seed images, as in Jacobian-based
augmentation) pile up at a few small distances. Once ``min_distances``
distances exist, the Shapiro-Wilk statistic W of the latest ``window`` is
computed every ``check_every`` new ones, and W below ``threshold`` flags the
key.

Departures from PRADA: the default tests the logarithm of the distances,
and skips repeats (queries closer than ``repeat_distance`` to a kept one).
Nearest-neighbour distances of natural images are right-skewed. Measured on
the Fashion-MNIST test set with the shipped LeNet-5 (10 random orders of
benign queries, 100 to 800 queries), raw distances gave W from 0.92 to 0.99
for benign traffic, overlapping Jacobian-based augmentation from 50 seeds
with step 0.1 (0.92 to 0.98). Their logarithms gave W of at least 0.96 for
benign traffic, while the same augmentation was flagged after 120 queries
(W near 0.87). ``log_distances=False`` restores PRADA's test. A retry
without the repeat rule gives a distance of 0, an outlier that alone can
push W under the threshold.

Limitations: queries drawn from natural data of the victim's domain (Knockoff
Nets with a public data set of the same kind) look benign and are not
flagged; an attacker who controls many keys splits the distances between
them; state lives in memory, so a restart forgets it (alerts and blocks are
stored).
"""

from __future__ import annotations

import logging
import math
import threading
import warnings
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats

from .config import MonitorSettings

__all__ = ["ExtractionMonitor", "MonitorVerdict", "shapiro_statistic"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MonitorVerdict:
    """The monitor's state for one key after a batch of queries.

    Attributes
    ----------
    key_id : str
    queries : int
        Queries seen from this key.
    distances : int
        Minimum distances collected.
    statistic : float or None
        Latest Shapiro-Wilk W; None before the first test.
    flagged : bool
        Whether the key has been flagged (stays True once set).
    newly_flagged : bool
        Whether this batch flagged it.
    """

    key_id: str
    queries: int
    distances: int
    statistic: float | None
    flagged: bool
    newly_flagged: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "queries": self.queries,
            "distances": self.distances,
            "statistic": self.statistic,
            "flagged": self.flagged,
        }


def shapiro_statistic(values: np.ndarray) -> float:
    """Return the Shapiro-Wilk W of ``values``; 0.0 when they are all equal (as far from normal as it gets)."""
    if values.size < 3 or float(np.ptp(values)) == 0.0:
        return 0.0
    with warnings.catch_warnings():
        # SciPy warns about ties and large samples; the statistic is still the one wanted.
        warnings.simplefilter("ignore")
        return float(stats.shapiro(values).statistic)


class _GrowingSet:
    """The kept queries of one class, as float16 rows in an array that doubles when full."""

    def __init__(self, dimension: int) -> None:
        self.rows = np.empty((8, dimension), dtype=np.float16)
        self.size = 0
        self.admitting_distances: list[float] = []
        self.threshold = 0.0

    def append(self, row: np.ndarray) -> None:
        if self.size == len(self.rows):
            self.rows = np.concatenate([self.rows, np.empty_like(self.rows)])
        self.rows[self.size] = row
        self.size += 1

    def members(self) -> np.ndarray:
        return self.rows[: self.size].astype(np.float64)


class _KeyState:
    def __init__(self, window: int) -> None:
        self.sets: dict[int, _GrowingSet] = {}
        self.distances: deque[float] = deque(maxlen=window)
        self.queries = 0
        self.points = 0
        self.repeats = 0
        self.since_check = 0
        self.statistic: float | None = None
        self.flagged = False
        self.lock = threading.Lock()


class ExtractionMonitor:
    """PRADA-style extraction monitor, one state per API key.

    Parameters
    ----------
    settings : MonitorSettings

    Examples
    --------
    >>> import torch
    >>> monitor = ExtractionMonitor(MonitorSettings(min_distances=20, check_every=5))
    >>> seeds = torch.rand(30, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    >>> verdict = monitor.observe("key", seeds, torch.zeros(30, dtype=torch.int64))
    >>> verdict.queries
    30
    """

    def __init__(self, settings: MonitorSettings | None = None) -> None:
        self.settings = settings or MonitorSettings()
        self._states: OrderedDict[str, _KeyState] = OrderedDict()
        self._lock = threading.Lock()

    def _state(self, key_id: str) -> _KeyState:
        with self._lock:
            state = self._states.get(key_id)
            if state is None:
                state = _KeyState(self.settings.window)
                self._states[key_id] = state
                while len(self._states) > self.settings.max_keys:
                    dropped, _ = self._states.popitem(last=False)
                    logger.info("extraction monitor: dropped the state of key %s (least recently seen)", dropped)
            else:
                self._states.move_to_end(key_id)
            return state

    def is_flagged(self, key_id: str) -> bool:
        """Return whether the key has been flagged since its state was created."""
        with self._lock:
            state = self._states.get(key_id)
        return state is not None and state.flagged

    def forget(self, key_id: str) -> None:
        """Drop the state of a key (after an operator cleared it)."""
        with self._lock:
            self._states.pop(key_id, None)

    def observe(self, key_id: str, inputs: torch.Tensor, classes: torch.Tensor) -> MonitorVerdict:
        """Add a batch of queries of one key, in order, and test its distances when due.

        Parameters
        ----------
        key_id : str
        inputs : torch.Tensor
            The queried inputs (N, ...), as the model received them.
        classes : torch.Tensor
            int64 (N,) predicted classes.
        """
        flat = inputs.detach().reshape(inputs.shape[0], -1).cpu().numpy().astype(np.float64)
        predicted = classes.detach().cpu().numpy().astype(np.int64)
        state = self._state(key_id)
        with state.lock:
            was_flagged = state.flagged
            for label in np.unique(predicted):
                self._add_class_batch(state, int(label), flat[predicted == label])
            state.queries += len(flat)
            self._test_if_due(state)
            return MonitorVerdict(
                key_id, state.queries, len(state.distances), state.statistic, state.flagged, state.flagged and not was_flagged
            )

    def _add_class_batch(self, state: _KeyState, label: int, rows: np.ndarray) -> None:
        """Process the rows of one class in query order; only the ordering within a class matters."""
        growing = state.sets.get(label)
        if growing is None:
            growing = state.sets[label] = _GrowingSet(rows.shape[1])
        members = growing.members()
        # Distances to the members kept before this batch, then among the batch's own rows.
        to_members = _pairwise_min(rows, members) if len(members) else np.full(len(rows), np.inf)
        within = _pairwise(rows, rows)
        admitted: list[int] = []
        for index, row in enumerate(rows):
            distance = to_members[index]
            if admitted:
                distance = min(distance, float(within[index, admitted].min()))
            if math.isinf(distance):
                # The class's first query has nothing to be compared with; it seeds the growing set.
                self._admit(state, growing, row, None)
                admitted.append(index)
                continue
            if distance < self.settings.repeat_distance:
                state.repeats += 1
                continue
            state.distances.append(distance)
            state.since_check += 1
            if distance > growing.threshold and state.points < self.settings.max_points:
                self._admit(state, growing, row, distance)
                admitted.append(index)

    @staticmethod
    def _admit(state: _KeyState, growing: _GrowingSet, row: np.ndarray, distance: float | None) -> None:
        growing.append(row)
        state.points += 1
        if distance is not None:
            growing.admitting_distances.append(distance)
            values = np.asarray(growing.admitting_distances)
            growing.threshold = max(growing.threshold, float(values.mean() - values.std()))

    def _test_if_due(self, state: _KeyState) -> None:
        settings = self.settings
        if len(state.distances) < settings.min_distances or state.since_check < settings.check_every:
            return
        state.since_check = 0
        values = np.asarray(state.distances, dtype=np.float64)
        if settings.log_distances:
            # Repeats are skipped, so every distance is at least repeat_distance; 1e-12 only guards log(0).
            values = np.log(np.maximum(values, 1e-12))
        state.statistic = shapiro_statistic(values)
        if state.statistic < settings.threshold:
            state.flagged = True

    def snapshot(self) -> list[dict[str, Any]]:
        """Return the state of every monitored key, for the admin endpoint."""
        with self._lock:
            items = list(self._states.items())
        return [
            {
                "key_id": key_id,
                "queries": state.queries,
                "distances": len(state.distances),
                "kept": state.points,
                "repeats": state.repeats,
                "statistic": state.statistic,
                "flagged": state.flagged,
            }
            for key_id, state in items
        ]


def _pairwise(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Return the (len(left), len(right)) L2 distances."""
    squared = (left * left).sum(1)[:, None] + (right * right).sum(1)[None, :] - 2.0 * left @ right.T
    return np.sqrt(np.maximum(squared, 0.0))


def _pairwise_min(rows: np.ndarray, members: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Return each row's distance to its nearest member, in chunks of members to bound memory."""
    best = np.full(len(rows), np.inf)
    for start in range(0, len(members), chunk):
        best = np.minimum(best, _pairwise(rows, members[start : start + chunk]).min(1))
    return best

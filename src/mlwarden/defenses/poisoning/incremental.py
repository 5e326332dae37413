"""Incremental training with rollback: every batch is screened, trained on a copy, checked, then served or undone.

A model that keeps learning from submitted data is open to poisoning one
batch at a time. :class:`IncrementalTrainer` keeps the served model safe:

1. A batch from a source that is blocked as a denial-of-service stream is
   quarantined at once, without training.
2. An optional screen flags single samples (for example labels that the
   served model finds nearly impossible); they are quarantined.
3. If the mean loss of the rest under the served model is far above the
   gold set's loss (``loss_factor``), the rest is quarantined before
   training, because it contradicts what the model has learned, as batches
   crafted to maximize loss do.
4. A copy of the served model is fine-tuned on the rest, and the copy is
   checked on the gold set (accuracy against the served model and against
   the first model, to catch slow drift) and by an optional backdoor check.
5. If the copy passes, it becomes the served model (a new version). If not,
   the copy is dropped, so the served weights stay exactly as they were,
   and the samples are quarantined with the failed check as the reason.
   With ``isolate_depth`` > 0 the batch is split in halves, recursively,
   so that harmless halves are still learned.
6. A source with ``stream_rejections`` rejected batches among its last
   ``stream_window`` is blocked until :meth:`IncrementalTrainer.unblock`.

No sample is ever dropped without a quarantine record and a reason.

Limitations: the gold set must be trusted and representative; an attacker
who knows it can craft batches that keep gold accuracy while planting a
backdoor that the backdoor check does not probe. Each batch costs one
fine-tuning and a few gold-set evaluations; bisection multiplies that.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..._validation import check_int, check_real
from ...errors import ParameterError
from .checks import BackdoorCheck, gold_accuracy, mean_loss
from .quarantine import QuarantineStore

__all__ = ["IncrementalConfig", "IncrementalTrainer", "BatchOutcome", "Screen", "LabelDisagreementScreen"]

logger = logging.getLogger(__name__)

Screen = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, list[str]]]
"""``(served model, inputs, labels) -> (bool mask of flagged samples, reason of each flagged sample)``."""


@dataclass
class IncrementalConfig:
    """Settings of :class:`IncrementalTrainer`, validated on construction.

    Attributes
    ----------
    epochs : int, default 2
        Passes over each accepted batch.
    batch_size : int, default 32
        Mini-batch size of the fine-tuning.
    learning_rate : float, default 3e-4
        Adam step size of the fine-tuning. A fresh Adam takes steps of about
        this size per weight, so 1e-3 already costs the shipped LeNet 4
        points of gold accuracy on 128 clean samples.
    accuracy_tolerance : float, default 0.02
        Largest drop of gold accuracy that one update may cause.
    max_drift : float, default 0.05
        Largest drop of gold accuracy below the first model's, summed over updates.
    backdoor_tolerance : float, default 0.1
        Largest rise of the backdoor check above the first model's score.
    loss_factor : float, default 4.0
        A batch whose mean loss exceeds ``loss_factor`` times the gold loss
        plus ``loss_margin`` is quarantined before training.
    loss_margin : float, default 0.5
        Added to the limit so that a model with a near-zero gold loss does not reject every batch.
    isolate_depth : int, default 0
        Levels of halving used to find the harmful part of a failed batch (0: reject it whole).
    stream_window, stream_rejections : int, default 5 and 3
        A source with ``stream_rejections`` rejected batches among its last
        ``stream_window`` is blocked.
    keep_versions : int, default 10
        Accepted versions kept for :meth:`IncrementalTrainer.rollback`.
    seed : int, default 0
    """

    epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 3e-4
    accuracy_tolerance: float = 0.02
    max_drift: float = 0.05
    backdoor_tolerance: float = 0.1
    loss_factor: float = 4.0
    loss_margin: float = 0.5
    isolate_depth: int = 0
    stream_window: int = 5
    stream_rejections: int = 3
    keep_versions: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        owner = "IncrementalConfig"
        self.epochs = check_int(self.epochs, "epochs", owner, low=1)
        self.batch_size = check_int(self.batch_size, "batch_size", owner, low=1)
        self.learning_rate = check_real(self.learning_rate, "learning_rate", owner, low=0.0, low_inclusive=False)
        self.accuracy_tolerance = check_real(self.accuracy_tolerance, "accuracy_tolerance", owner, low=0.0, high=1.0)
        self.max_drift = check_real(self.max_drift, "max_drift", owner, low=0.0, high=1.0)
        self.backdoor_tolerance = check_real(self.backdoor_tolerance, "backdoor_tolerance", owner, low=0.0, high=1.0)
        self.loss_factor = check_real(self.loss_factor, "loss_factor", owner, low=1.0)
        self.loss_margin = check_real(self.loss_margin, "loss_margin", owner, low=0.0)
        self.isolate_depth = check_int(self.isolate_depth, "isolate_depth", owner, low=0, high=16)
        self.stream_window = check_int(self.stream_window, "stream_window", owner, low=1)
        self.stream_rejections = check_int(self.stream_rejections, "stream_rejections", owner, low=1, high=self.stream_window)
        self.keep_versions = check_int(self.keep_versions, "keep_versions", owner, low=1)
        self.seed = check_int(self.seed, "seed", owner)


@dataclass
class BatchOutcome:
    """Outcome of one submitted batch.

    ``status`` is ``accepted`` (every sample learned), ``partial`` (some
    samples learned, the rest quarantined), ``rolled back`` (trained, failed
    a check, undone), ``rejected`` (quarantined before training) or
    ``blocked`` (its source is blocked as a denial-of-service stream).
    """

    batch_id: str
    source: str | None
    status: str
    samples: int
    accepted: int
    quarantined: int
    reasons: list[str]
    version: int
    gold_accuracy: float
    candidate_gold_accuracy: float | None = None
    backdoor_score: float | None = None
    candidate_backdoor_score: float | None = None
    batch_loss: float | None = None
    seconds: float = 0.0
    record_ids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return the outcome as plain data."""
        return asdict(self)


class LabelDisagreementScreen:
    """Flag samples whose label has a probability below ``min_probability`` under the served model.

    Parameters
    ----------
    min_probability : float, default 0.01
        In (0, 1). The served model must be nearly certain the label is wrong.
    """

    def __init__(self, min_probability: float = 0.01) -> None:
        self.min_probability = check_real(
            min_probability, "min_probability", "LabelDisagreementScreen", low=0.0, high=1.0, low_inclusive=False, high_inclusive=False
        )

    @torch.no_grad()
    def __call__(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
        probabilities = F.softmax(model(inputs), dim=1)
        given = probabilities.gather(1, labels.view(-1, 1)).squeeze(1)
        flagged = given < self.min_probability
        predicted = probabilities.argmax(1)
        reasons = [
            f"the served model gives label {int(labels[i])} probability {float(given[i]):.4f} "
            f"(below {self.min_probability:g}) and predicts {int(predicted[i])}"
            for i in flagged.nonzero().flatten().tolist()
        ]
        return flagged, reasons


class IncrementalTrainer:
    """Fine-tune a served model batch by batch, rolling back every update that fails the gold-set checks.

    Parameters
    ----------
    model : nn.Module
        The model to serve; from now on it only changes by accepted updates.
    gold_inputs, gold_labels : torch.Tensor
        Trusted held-out set, never trained on.
    quarantine : QuarantineStore
        Where every rejected sample is recorded with its reason.
    config : IncrementalConfig, optional
    screen : callable, optional
        Per-sample screen, see :data:`Screen` and :class:`LabelDisagreementScreen`.
    backdoor_check : callable, optional
        ``model -> score`` in [0, 1], see :mod:`mlwarden.defenses.poisoning.checks`.

    Example
    -------
    >>> trainer = IncrementalTrainer(model, gold_x, gold_y, quarantine=QuarantineStore("quarantine.db"))  # doctest: +SKIP
    >>> outcome = trainer.submit(batch_x, batch_y, source="sensor-17")  # doctest: +SKIP
    >>> outcome.status, trainer.version  # doctest: +SKIP
    ('accepted', 1)
    """

    def __init__(
        self,
        model: nn.Module,
        gold_inputs: torch.Tensor,
        gold_labels: torch.Tensor,
        *,
        quarantine: QuarantineStore,
        config: IncrementalConfig | None = None,
        screen: Screen | None = None,
        backdoor_check: BackdoorCheck | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ParameterError(f"IncrementalTrainer: model must be a torch.nn.Module, got {type(model).__name__}", value=type(model))
        if not isinstance(quarantine, QuarantineStore):
            raise ParameterError(
                f"IncrementalTrainer: quarantine must be a QuarantineStore, got {type(quarantine).__name__}", value=type(quarantine)
            )
        if not isinstance(gold_labels, torch.Tensor) or gold_labels.shape != (len(gold_inputs),) or len(gold_labels) == 0:
            raise ParameterError("IncrementalTrainer: the gold set must be non-empty inputs with one int64 label each", value=None)
        self.config = config or IncrementalConfig()
        self.quarantine = quarantine
        self.screen = screen
        self.backdoor_check = backdoor_check
        self._model = model.eval()
        self._gold_inputs, self._gold_labels = gold_inputs, gold_labels
        # Updates (submit, rollback, unblock) run one at a time; the serving lock is held only to swap
        # weights and to predict, so predictions never wait for a fine-tuning.
        self._update_lock = threading.RLock()
        self._serving_lock = threading.Lock()
        self.version = 0
        self._last_version = 0
        self.history: list[BatchOutcome] = []
        self._versions: deque[tuple[int, dict[str, torch.Tensor]]] = deque(maxlen=self.config.keep_versions + 1)
        self._versions.append((0, _snapshot(model)))
        self.gold_accuracy = gold_accuracy(model, gold_inputs, gold_labels)
        self.gold_loss = mean_loss(model, gold_inputs, gold_labels)
        self.reference_accuracy = self.gold_accuracy
        self.backdoor_score = backdoor_check(model) if backdoor_check else None
        self.reference_backdoor = self.backdoor_score
        self._recent: dict[str | None, deque[bool]] = {}
        self.blocked_sources: dict[str | None, str] = {}
        self._submitted = 0
        logger.info("incremental training starts: gold accuracy %.4f, gold loss %.4f", self.gold_accuracy, self.gold_loss)

    # --- serving ----------------------------------------------------------------------

    @property
    def model(self) -> nn.Module:
        """The served model: the last version that passed every check."""
        return self._model

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        """Return the served model's logits, never from a half-updated model."""
        with self._serving_lock:
            return self._model(inputs)

    # --- the loop ---------------------------------------------------------------------

    def submit(
        self, inputs: torch.Tensor, labels: torch.Tensor, *, batch_id: str | None = None, source: str | None = None
    ) -> BatchOutcome:
        """Screen, train on and check one batch; return what happened to it.

        Raises
        ------
        ParameterError
            The batch's inputs and labels do not match.
        """
        start = time.perf_counter()
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.shape != (len(inputs),):
            raise ParameterError(
                f"IncrementalTrainer.submit: labels must be int64 of shape ({len(inputs)},), got "
                f"{getattr(labels, 'dtype', type(labels).__name__)} {tuple(getattr(labels, 'shape', ()))}",
                value=None,
            )
        with self._update_lock:
            self._submitted += 1
            batch_id = batch_id or f"batch-{self._submitted}"
            outcome = self._submit(inputs, labels, batch_id, source)
            outcome.seconds = time.perf_counter() - start
            self._watch_stream(source, outcome)
            self.history.append(outcome)
        logger.info(
            "batch %s from %s: %s, %d accepted, %d quarantined, version %d",
            batch_id, source, outcome.status, outcome.accepted, outcome.quarantined, outcome.version,
        )
        return outcome

    def _submit(self, inputs: torch.Tensor, labels: torch.Tensor, batch_id: str, source: str | None) -> BatchOutcome:
        outcome = BatchOutcome(
            batch_id, source, "accepted", len(labels), 0, 0, [], self.version, self.gold_accuracy,
            backdoor_score=self.backdoor_score,
        )
        everything = np.arange(len(labels))
        if source in self.blocked_sources:
            self._reject(outcome, inputs, labels, everything, f"source {source!r} is blocked: {self.blocked_sources[source]}")
            outcome.status = "blocked"
            return outcome

        kept = everything
        if self.screen is not None:
            was_training = self._model.training
            self._model.eval()
            try:
                flagged, reasons = self.screen(self._model, inputs, labels)
            finally:
                self._model.train(was_training)
            flagged_rows = np.flatnonzero(np.asarray(flagged, dtype=bool))
            if len(reasons) != len(flagged_rows):
                raise ParameterError(
                    f"the screen returned {len(reasons)} reasons for {len(flagged_rows)} flagged samples; it must give one each",
                    value=len(reasons),
                )
            if len(flagged_rows):
                self._reject(outcome, inputs, labels, flagged_rows, [f"screen: {reason}" for reason in reasons])
            kept = np.setdiff1d(everything, flagged_rows)

        if len(kept):
            index = torch.from_numpy(kept)
            outcome.batch_loss = mean_loss(self._model, inputs[index], labels[index])
            limit = self.config.loss_factor * self.gold_loss + self.config.loss_margin
            if outcome.batch_loss > limit:
                reason = (
                    f"batch mean loss {outcome.batch_loss:.3f} under the served model is above the limit {limit:.3f} "
                    f"({self.config.loss_factor:g} x gold loss {self.gold_loss:.3f} + {self.config.loss_margin:g}); "
                    "the batch contradicts the model as loss-maximizing batches do"
                )
                self._reject(outcome, inputs, labels, kept, reason)
                kept = kept[:0]

        if len(kept):
            self._train_and_check(outcome, inputs, labels, kept, self.config.isolate_depth)
        if outcome.accepted == outcome.samples:
            outcome.status = "accepted"
        elif outcome.accepted > 0:
            outcome.status = "partial"
        elif outcome.candidate_gold_accuracy is not None:
            outcome.status = "rolled back"
        else:
            outcome.status = "rejected"
        outcome.version = self.version
        return outcome

    def _train_and_check(self, outcome: BatchOutcome, inputs: torch.Tensor, labels: torch.Tensor, rows: np.ndarray, depth: int) -> None:
        candidate = self._fine_tune(inputs[rows], labels[rows])
        accuracy = gold_accuracy(candidate, self._gold_inputs, self._gold_labels)
        backdoor = self.backdoor_check(candidate) if self.backdoor_check else None
        outcome.candidate_gold_accuracy = accuracy
        outcome.candidate_backdoor_score = backdoor
        failure = self._failed_check(accuracy, backdoor)
        if failure is None:
            self._promote(candidate, accuracy, backdoor)
            outcome.accepted += len(rows)
            outcome.gold_accuracy, outcome.backdoor_score = accuracy, backdoor
            return
        # The candidate is dropped, so the served weights are untouched: that is the rollback.
        logger.warning("batch %s: update on %d samples rolled back: %s", outcome.batch_id, len(rows), failure)
        if depth > 0 and len(rows) > 1:
            half = len(rows) // 2
            for part in (rows[:half], rows[half:]):
                self._train_and_check(outcome, inputs, labels, part, depth - 1)
            return
        self._reject(outcome, inputs, labels, rows, f"rolled back: {failure}")

    def _failed_check(self, accuracy: float, backdoor: float | None) -> str | None:
        config = self.config
        if accuracy < self.gold_accuracy - config.accuracy_tolerance:
            return (
                f"gold accuracy would fall from {self.gold_accuracy:.4f} to {accuracy:.4f}, more than the tolerance "
                f"{config.accuracy_tolerance:g}"
            )
        if accuracy < self.reference_accuracy - config.max_drift:
            return (
                f"gold accuracy {accuracy:.4f} would drift more than {config.max_drift:g} below the first model's "
                f"{self.reference_accuracy:.4f}"
            )
        if backdoor is not None and self.reference_backdoor is not None:
            if backdoor > self.reference_backdoor + config.backdoor_tolerance:
                return (
                    f"backdoor check would rise from {self.reference_backdoor:.4f} to {backdoor:.4f}, more than the "
                    f"tolerance {config.backdoor_tolerance:g}"
                )
        return None

    def _fine_tune(self, inputs: torch.Tensor, labels: torch.Tensor) -> nn.Module:
        """Return a copy of the served model fine-tuned on the samples; the served model is not touched."""
        config = self.config
        candidate = copy.deepcopy(self._model)
        optimizer = torch.optim.Adam(candidate.parameters(), lr=config.learning_rate)
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + self._submitted)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed * 1_000_003 + self._submitted)
            candidate.train()
            for _ in range(config.epochs):
                order = torch.randperm(len(labels), generator=generator)
                for first in range(0, len(labels), config.batch_size):
                    index = order[first : first + config.batch_size]
                    loss = F.cross_entropy(candidate(inputs[index]), labels[index])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
        return candidate.eval()

    def _promote(self, candidate: nn.Module, accuracy: float, backdoor: float | None) -> None:
        with self._serving_lock:
            self._model.load_state_dict(candidate.state_dict())
            self._model.eval()
        # Numbers only grow, so a version made after a rollback never reuses an old number.
        self._last_version += 1
        self.version = self._last_version
        self._versions.append((self.version, _snapshot(self._model)))
        self.gold_accuracy = accuracy
        self.gold_loss = mean_loss(self._model, self._gold_inputs, self._gold_labels)
        self.backdoor_score = backdoor

    def _reject(
        self, outcome: BatchOutcome, inputs: torch.Tensor, labels: torch.Tensor, rows: np.ndarray, reason: str | list[str]
    ) -> None:
        """Quarantine the rows with one reason for all or one reason each, and count them in the outcome."""
        index = torch.from_numpy(rows.astype(np.int64))
        outcome.record_ids += self.quarantine.add(
            inputs[index], labels[index], reason=reason, source=outcome.source, batch_id=outcome.batch_id, indices=rows
        )
        outcome.quarantined += len(rows)
        for text in [reason] if isinstance(reason, str) else reason:
            if text not in outcome.reasons:
                outcome.reasons.append(text)

    # --- streams and manual control ------------------------------------------------------

    def _watch_stream(self, source: str | None, outcome: BatchOutcome) -> None:
        if outcome.status == "blocked":
            return
        recent = self._recent.setdefault(source, deque(maxlen=self.config.stream_window))
        recent.append(outcome.status in ("rejected", "rolled back"))
        rejected = sum(recent)
        if rejected >= self.config.stream_rejections and source not in self.blocked_sources:
            reason = (
                f"{rejected} of its last {len(recent)} batches were rejected or rolled back, the pattern of a "
                "denial-of-service stream against incremental training"
            )
            self.blocked_sources[source] = reason
            logger.warning("blocking source %r: %s", source, reason)

    def unblock(self, source: str | None) -> None:
        """Accept batches from ``source`` again and forget its recent rejections."""
        with self._update_lock:
            self.blocked_sources.pop(source, None)
            self._recent.pop(source, None)
        logger.info("source %r unblocked", source)

    def rollback(self, versions: int = 1) -> int:
        """Restore the exact weights of an earlier accepted version and return its number.

        Raises
        ------
        ParameterError
            Fewer earlier versions are kept than requested.
        """
        versions = check_int(versions, "versions", "IncrementalTrainer.rollback", low=1)
        with self._update_lock:
            if versions >= len(self._versions):
                raise ParameterError(
                    f"IncrementalTrainer.rollback: only {len(self._versions) - 1} earlier versions are kept, "
                    f"cannot go back {versions}; raise keep_versions",
                    value=versions,
                )
            for _ in range(versions):
                self._versions.pop()
            number, state = self._versions[-1]
            with self._serving_lock:
                self._model.load_state_dict(state)
                self._model.eval()
            self.gold_accuracy = gold_accuracy(self._model, self._gold_inputs, self._gold_labels)
            self.gold_loss = mean_loss(self._model, self._gold_inputs, self._gold_labels)
            self.backdoor_score = self.backdoor_check(self._model) if self.backdoor_check else None
            logger.warning("rolled back from version %d to version %d", self.version, number)
            self.version = number
            return number


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return a deep copy of the model's parameters and buffers."""
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}

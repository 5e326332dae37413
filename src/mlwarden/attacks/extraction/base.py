"""What model-extraction attacks share: the result, copy training, and the evaluation of a copy.

An extraction attack queries a victim (a :class:`~mlwarden.models.query.QueryModel`,
such as the mlwarden service over HTTP) and trains a copy on the answers.
Its result records, at query checkpoints, the copy's agreement with the
victim (share of test inputs where both predict the same class) and its
accuracy on the true labels, so that a report can plot what the attacker
gains against the queries spent. When the victim stops answering (its
budget runs out, or a service refuses with 403 or 429), the attack keeps
what it has, trains on it, and records why it stopped.

The evaluation is the defender's view: it runs a local copy of the victim
on held-out test data, outside the attacker's query budget.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..._validation import check_int, check_real, owner_of
from ...errors import BudgetExhausted, ParameterError
from ...models.zoo import build
from ...threat import ThreatProfile


if TYPE_CHECKING:
    from ...models.query import QueryModel

__all__ = [
    "ExtractionCheckpoint",
    "ExtractionResult",
    "ExtractionEvaluation",
    "ModelExtraction",
    "train_copy",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractionCheckpoint:
    """The copy after a number of queries: agreement with the victim and accuracy, on the evaluation set."""

    queries: int
    agreement: float | None
    accuracy: float | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"queries": self.queries, "agreement": self.agreement, "accuracy": self.accuracy, "seconds": self.seconds}


@dataclass
class ExtractionResult:
    """Outcome of one extraction run.

    Attributes
    ----------
    attack : str
    copy : nn.Module
        The stolen model after the last checkpoint, in eval mode.
    checkpoints : list of ExtractionCheckpoint
        In increasing order of queries; the last one is the final copy.
    queries : int
        Queries answered by the victim.
    stopped : str or None
        Why querying ended before the budget was spent (the victim's refusal); None otherwise.
    settings : dict
    """

    attack: str
    copy: nn.Module
    checkpoints: list[ExtractionCheckpoint]
    queries: int
    stopped: str | None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def agreement(self) -> float | None:
        """Agreement of the final copy with the victim."""
        return self.checkpoints[-1].agreement if self.checkpoints else None

    @property
    def accuracy(self) -> float | None:
        """Accuracy of the final copy."""
        return self.checkpoints[-1].accuracy if self.checkpoints else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "queries": self.queries,
            "stopped": self.stopped,
            "agreement": self.agreement,
            "accuracy": self.accuracy,
            "checkpoints": [checkpoint.to_dict() for checkpoint in self.checkpoints],
            "settings": self.settings,
        }


class ExtractionEvaluation:
    """Scores a copy against a local reference of the victim on held-out data.

    Parameters
    ----------
    reference : nn.Module or None
        The victim's model (the defender's copy), returning logits; without
        it only the accuracy is scored.
    images : torch.Tensor
        Held-out inputs (N, C, H, W), never queried by the attacker.
    labels : torch.Tensor, optional
        Their true labels, for the copy's accuracy.
    """

    def __init__(self, reference: nn.Module | None, images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        if reference is None and labels is None:
            raise ParameterError("ExtractionEvaluation needs a reference model, labels, or both", value=None)
        self.images = images
        self.labels = labels
        self.reference_predictions = None if reference is None else _predict(reference, images)

    def score(self, copy: nn.Module) -> tuple[float | None, float | None]:
        """Return ``(agreement, accuracy)`` of ``copy``; each is None when it cannot be scored."""
        predictions = _predict(copy, self.images)
        agreement = None
        if self.reference_predictions is not None:
            agreement = float((predictions == self.reference_predictions).float().mean())
        accuracy = None if self.labels is None else float((predictions == self.labels).float().mean())
        return agreement, accuracy


@torch.no_grad()
def _predict(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(images[start : start + batch_size]).argmax(1) for start in range(0, len(images), batch_size)])
    finally:
        model.train(was_training)


def train_copy(
    copy: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    epochs: int,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Train ``copy`` in place with Adam on the victim's answers and return it in eval mode.

    ``targets`` are probabilities (N, C), fitted with the cross-entropy to
    the soft labels, or labels (N,), fitted with the usual cross-entropy.
    """
    optimizer = torch.optim.Adam(copy.parameters(), lr=learning_rate)
    copy.train()
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(inputs), batch_size):
            index = order[start : start + batch_size]
            logits = copy(inputs[index])
            if targets.dim() == 2:
                loss = -(targets[index] * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
            else:
                loss = F.cross_entropy(logits, targets[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return copy.eval()


class ModelExtraction:
    """Base class of extraction attacks: settings, victim queries with refusals, copy training.

    Subclasses implement :meth:`extract`.

    Parameters
    ----------
    architecture : str, default "lenet5"
        Zoo architecture of the copy.
    epochs : int, default 10
        Training epochs of the copy at each checkpoint.
    batch_size : int, default 64
        Training batch size of the copy.
    learning_rate : float, default 1e-3
    query_batch : int, default 100
        Inputs sent to the victim per query call.
    seed : int, default 0
        Seeds the copy's initialization, the shuffling and the attack's own draws.
    """

    name: ClassVar[str] = "extraction"
    profile: ClassVar[ThreatProfile]

    def __init__(
        self,
        *,
        architecture: str = "lenet5",
        epochs: int = 10,
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        query_batch: int = 100,
        seed: int = 0,
    ) -> None:
        owner = owner_of(self)
        self.architecture = architecture
        self.epochs = check_int(epochs, "epochs", owner, low=1)
        self.batch_size = check_int(batch_size, "batch_size", owner, low=1)
        self.learning_rate = check_real(learning_rate, "learning_rate", owner, low=0.0, low_inclusive=False)
        self.query_batch = check_int(query_batch, "query_batch", owner, low=1)
        self.seed = check_int(seed, "seed", owner)
        build(architecture)  # fail now on an unknown architecture, not after the queries

    def settings(self) -> dict[str, Any]:
        """Return the constructor settings, as stored in results."""
        return {key: value for key, value in vars(self).items() if not key.startswith("_")}

    def __repr__(self) -> str:
        inner = ", ".join(f"{key}={value!r}" for key, value in self.settings().items())
        return f"{type(self).__name__}({inner})"

    def extract(
        self,
        victim: QueryModel,
        pool: torch.Tensor,
        *,
        budget: int,
        evaluation: ExtractionEvaluation | None = None,
    ) -> ExtractionResult:
        """Steal ``victim`` with at most ``budget`` queries, drawing inputs from the attacker's ``pool``."""
        raise NotImplementedError

    # --- helpers for subclasses ---------------------------------------------------------

    def _new_copy(self, num_classes: int, salt: int = 0) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + salt)
            return build(self.architecture, num_classes=num_classes)

    def _fit(self, inputs: torch.Tensor, targets: torch.Tensor, num_classes: int, salt: int = 0) -> nn.Module:
        """Train a fresh copy on every answer so far, so a checkpoint does not depend on earlier ones."""
        generator = torch.Generator().manual_seed(self.seed * 7919 + salt)
        copy = self._new_copy(num_classes, salt)
        return train_copy(
            copy,
            inputs,
            targets,
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            generator=generator,
        )

    def _ask(self, victim: QueryModel, inputs: torch.Tensor) -> tuple[torch.Tensor | None, str | None]:
        """Return the victim's answers (probabilities, or labels when decision-based), or why it refused."""
        answers = []
        for start in range(0, len(inputs), self.query_batch):
            chunk = inputs[start : start + self.query_batch]
            try:
                if victim.decision_based:
                    answers.append(victim.predict_labels(chunk))
                else:
                    answers.append(victim.predict_scores(chunk))
            except BudgetExhausted as error:
                logger.info("%s: the victim stopped answering: %s", self.name, error.message)
                partial = torch.cat(answers) if answers else None
                return partial, error.message
        return torch.cat(answers), None

    def _checkpoint(
        self, copy: nn.Module, queries: int, evaluation: ExtractionEvaluation | None, started: float
    ) -> ExtractionCheckpoint:
        agreement, accuracy = evaluation.score(copy) if evaluation is not None else (None, None)
        checkpoint = ExtractionCheckpoint(queries, agreement, accuracy, time.perf_counter() - started)
        logger.info(
            "%s: copy after %d queries: agreement %s, accuracy %s",
            self.name,
            queries,
            "n/a" if agreement is None else f"{agreement:.4f}",
            "n/a" if accuracy is None else f"{accuracy:.4f}",
        )
        return checkpoint


def check_pool(pool: torch.Tensor, owner: str, needed: int = 1) -> None:
    """Raise ParameterError unless ``pool`` is a float batch (N, C, H, W) with at least ``needed`` images."""
    if not isinstance(pool, torch.Tensor) or pool.dim() != 4 or not pool.is_floating_point():
        raise ParameterError(
            f"{owner}: pool must be a float tensor of images (N, C, H, W), got {type(pool).__name__} "
            f"{tuple(getattr(pool, 'shape', ()))}",
            value=type(pool),
        )
    if len(pool) < needed:
        raise ParameterError(f"{owner}: pool has {len(pool)} images, at least {needed} are needed", value=len(pool))


def checkpoint_counts(budget: int, checkpoints: Sequence[int] | None) -> list[int]:
    """Return the sorted query counts at which to train and score the copy, ending at the budget."""
    if checkpoints is None:
        counts = {max(1, budget // 8), max(1, budget // 4), max(1, budget // 2), budget}
    else:
        counts = {check_int(count, "checkpoints", "extraction", low=1) for count in checkpoints if count <= budget}
        counts.add(budget)
    return sorted(counts)

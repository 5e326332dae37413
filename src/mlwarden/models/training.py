"""Supervised training loop with progress bars, used by ``mlwarden train``.

The loss of a batch is a pluggable function, so robust training methods
(adversarial training, TRADES) reuse the same loop, evaluation and logging.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .._validation import check_int, check_real
from ..data import Dataset

__all__ = ["TrainingConfig", "EpochRecord", "train_model", "evaluate_accuracy", "cross_entropy_loss"]

logger = logging.getLogger(__name__)

BatchLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
EpochHook = Callable[[nn.Module], dict[str, float]]


def cross_entropy_loss(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Return the mean cross-entropy of the model on a batch: standard training."""
    return F.cross_entropy(model(inputs), labels)


@dataclass
class TrainingConfig:
    """Settings of :func:`train_model`, validated on construction."""

    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        owner = "TrainingConfig"
        self.epochs = check_int(self.epochs, "epochs", owner, low=1)
        self.batch_size = check_int(self.batch_size, "batch_size", owner, low=1)
        self.learning_rate = check_real(self.learning_rate, "learning_rate", owner, low=0.0, low_inclusive=False)
        self.weight_decay = check_real(self.weight_decay, "weight_decay", owner, low=0.0)
        self.seed = check_int(self.seed, "seed", owner)


@dataclass
class EpochRecord:
    """Figures of one training epoch."""

    epoch: int
    loss: float
    train_accuracy: float
    test_accuracy: float
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "loss": self.loss,
            "train_accuracy": self.train_accuracy,
            "test_accuracy": self.test_accuracy,
            "seconds": self.seconds,
            **self.extra,
        }


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Return the model's accuracy on images, in eval mode; the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = model(images[start : start + batch_size])
        correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    model.train(was_training)
    return correct / max(len(labels), 1)


def train_model(
    model: nn.Module,
    train: Dataset,
    test: Dataset,
    config: TrainingConfig,
    *,
    batch_loss: BatchLoss = cross_entropy_loss,
    epoch_hook: EpochHook | None = None,
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
    progress: bool | None = None,
) -> list[EpochRecord]:
    """Train ``model`` in place with Adam and return one record per epoch.

    Parameters
    ----------
    model : nn.Module
    train, test : Dataset
        Training data, and held-out data for the per-epoch test accuracy.
    config : TrainingConfig
    batch_loss : callable, default :func:`cross_entropy_loss`
        ``(model, inputs, labels) -> scalar loss``, called in train mode.
    epoch_hook : callable, optional
        ``(model) -> dict`` of extra figures per epoch (robust accuracy, for
        example), called in eval mode after each epoch.
    on_epoch_end : callable, optional
        Receives each epoch's record as soon as it is complete, so a command
        line can print it while training goes on.
    progress : bool or None
        Show a progress bar; None shows it only on a terminal.

    The shuffling order comes from ``config.seed``, so the same seed and
    data give the same weights on the same machine and thread count.
    """
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    history: list[EpochRecord] = []
    count = len(train)
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(count, generator=generator)
        total_loss = 0.0
        batches = range(0, count, config.batch_size)
        bar = tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", unit="batch", disable=_disable(progress), leave=False)
        for first in bar:
            index = order[first : first + config.batch_size]
            inputs, labels = train.images[index], train.labels[index]
            loss = batch_loss(model, inputs, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * len(index)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        model.eval()
        train_accuracy = evaluate_accuracy(model, train.images[:10000], train.labels[:10000])
        test_accuracy = evaluate_accuracy(model, test.images, test.labels)
        extra = epoch_hook(model) if epoch_hook else {}
        record = EpochRecord(epoch, total_loss / count, train_accuracy, test_accuracy, time.perf_counter() - start, extra)
        history.append(record)
        if on_epoch_end is not None:
            on_epoch_end(record)
        logger.info(
            "epoch %d/%d: loss %.4f, train accuracy %.4f, test accuracy %.4f%s",
            epoch,
            config.epochs,
            record.loss,
            train_accuracy,
            test_accuracy,
            "".join(f", {key} {value:.4f}" for key, value in extra.items()),
        )
    model.eval()
    return history


def _disable(progress: bool | None) -> bool | None:
    return None if progress is None else not progress

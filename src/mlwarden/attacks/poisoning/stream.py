"""Denial of service on incremental learning: streams of batches that wreck a model that keeps training.

A service that fine-tunes on submitted data can be made useless without any
single dramatic batch. Two streams are provided:

- :class:`LossMaximizingStream` labels every submitted input with the class
  the current model finds least likely, so that each update takes the
  largest step away from the model's knowledge;
- :class:`DriftStream` permutes labels (class c is submitted as c + shift)
  on a fraction of each batch that grows from batch to batch, so that each
  update is small but the model drifts until it is useless.

Both are iterators of ``(inputs, labels)`` batches drawn from an attacker's
pool of inputs.

Limitations: both streams change labels only. Crafted inputs (optimized
pixels) would make a stronger stream; the defense in
:mod:`mlwarden.defenses.poisoning.incremental` checks the model's behaviour
on trusted data, so it does not depend on how a batch was made.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from ..._validation import check_int, check_real, owner_of
from ...errors import ParameterError

__all__ = ["LossMaximizingStream", "DriftStream"]


def _check_pool(inputs: torch.Tensor, owner: str) -> None:
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 2 or len(inputs) == 0:
        raise ParameterError(
            f"{owner}: the pool must be a non-empty tensor (N, ...), got {tuple(getattr(inputs, 'shape', ()))}",
            value=type(inputs),
        )


class LossMaximizingStream:
    """Batches from a pool, each labeled with the class the model currently finds least likely.

    Parameters
    ----------
    model : nn.Module
        The model being served and retrained. It is queried (in eval mode)
        when each batch is drawn, so the labels follow the model's updates.
    inputs : torch.Tensor
        The attacker's pool of inputs (N, ...).
    batch_size : int, default 64
    batches : int, default 10
        Length of the stream.
    seed : int, default 0
    """

    def __init__(self, model: nn.Module, inputs: torch.Tensor, *, batch_size: int = 64, batches: int = 10, seed: int = 0) -> None:
        owner = owner_of(self)
        _check_pool(inputs, owner)
        self.model = model
        self.inputs = inputs
        self.batch_size = check_int(batch_size, "batch_size", owner, low=1)
        self.batches = check_int(batches, "batches", owner, low=1)
        self.seed = check_int(seed, "seed", owner)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(self.batches):
            index = torch.randint(len(self.inputs), (self.batch_size,), generator=generator)
            batch = self.inputs[index]
            was_training = self.model.training
            self.model.eval()
            with torch.no_grad():
                labels = self.model(batch).argmin(1)
            self.model.train(was_training)
            yield batch, labels


class DriftStream:
    """Batches whose labels are shifted on a growing fraction of the samples.

    Parameters
    ----------
    inputs, labels : torch.Tensor
        The attacker's pool of correctly labeled samples.
    num_classes : int
    shift : int, default 1
        Class c is relabeled (c + shift) mod num_classes.
    start_fraction : float, default 0.2
        Fraction of the first batch that is relabeled, in [0, 1].
    growth : float, default 0.1
        Added to the fraction at every batch, up to 1.
    batch_size : int, default 64
    batches : int, default 10
    seed : int, default 0
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        *,
        num_classes: int,
        shift: int = 1,
        start_fraction: float = 0.2,
        growth: float = 0.1,
        batch_size: int = 64,
        batches: int = 10,
        seed: int = 0,
    ) -> None:
        owner = owner_of(self)
        _check_pool(inputs, owner)
        if not isinstance(labels, torch.Tensor) or labels.shape != (len(inputs),):
            raise ParameterError(f"{owner}: labels must have shape ({len(inputs)},)", value=tuple(getattr(labels, "shape", ())))
        self.inputs, self.labels = inputs, labels
        self.num_classes = check_int(num_classes, "num_classes", owner, low=2)
        self.shift = check_int(shift, "shift", owner, low=1, high=self.num_classes - 1)
        self.start_fraction = check_real(start_fraction, "start_fraction", owner, low=0.0, high=1.0)
        self.growth = check_real(growth, "growth", owner, low=0.0, high=1.0)
        self.batch_size = check_int(batch_size, "batch_size", owner, low=1)
        self.batches = check_int(batches, "batches", owner, low=1)
        self.seed = check_int(seed, "seed", owner)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed)
        for number in range(self.batches):
            index = torch.randint(len(self.inputs), (self.batch_size,), generator=generator)
            labels = self.labels[index].clone()
            fraction = min(1.0, self.start_fraction + number * self.growth)
            shifted = torch.rand(self.batch_size, generator=generator) < fraction
            labels[shifted] = (labels[shifted] + self.shift) % self.num_classes
            yield self.inputs[index], labels

"""Forward and backward passes that attacks share, with their cost counted.

Losses are summed over the batch, never averaged, so that each sample's
gradient is independent of the batch it travels in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._fast_layers import fast_layers

__all__ = ["CostCounter", "evaluation_mode", "predict_logits", "attack_loss_gradient", "class_gradients"]


@dataclass
class CostCounter:
    """Running count of gradients and queries, per sample."""

    gradients: int = 0
    queries: int = 0


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode, then restore each one's own mode.

    Restoring per submodule matters: a model may come with some layers
    deliberately frozen in eval mode while the rest is in train mode.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@torch.no_grad()
def predict_logits(model: nn.Module, inputs: torch.Tensor, counter: CostCounter | None = None) -> torch.Tensor:
    """Return the model's logits without building a graph."""
    if counter is not None:
        counter.queries += inputs.shape[0]
    with fast_layers():
        return model(inputs)


def attack_loss_gradient(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor | None = None,
    counter: CostCounter | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(logits, gradient)`` of the cross-entropy objective an attacker ascends.

    Untargeted: the cross-entropy of the true label, to increase. Targeted:
    minus the cross-entropy of the target, so that ascending moves towards it.
    """
    inputs = inputs.detach().requires_grad_(True)
    with torch.enable_grad(), fast_layers():
        logits = model(inputs)
        if targets is None:
            loss = F.cross_entropy(logits, labels, reduction="sum")
        else:
            loss = -F.cross_entropy(logits, targets, reduction="sum")
        (gradient,) = torch.autograd.grad(loss, inputs)
    if counter is not None:
        counter.gradients += inputs.shape[0]
    return logits.detach(), gradient.detach()


def class_gradients(
    model: nn.Module, inputs: torch.Tensor, classes: torch.Tensor, counter: CostCounter | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(logits, gradients)`` of several logits per sample.

    Parameters
    ----------
    classes : torch.Tensor
        int64 (N, K): for each sample, the K classes whose logit gradient is needed.

    Returns
    -------
    logits : torch.Tensor
        (N, num_classes)
    gradients : torch.Tensor
        (N, K, *input_shape): gradient of logit ``classes[n, k]`` of sample n.
        One backward pass per column k, each over the whole batch.
    """
    inputs = inputs.detach().requires_grad_(True)
    columns = []
    with torch.enable_grad(), fast_layers():
        logits = model(inputs)
        picked = logits.gather(1, classes)
        for k in range(classes.shape[1]):
            (gradient,) = torch.autograd.grad(picked[:, k].sum(), inputs, retain_graph=k + 1 < classes.shape[1])
            columns.append(gradient)
    if counter is not None:
        counter.gradients += inputs.shape[0] * classes.shape[1]
    return logits.detach(), torch.stack(columns, dim=1)

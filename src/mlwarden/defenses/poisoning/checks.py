"""Checks that incremental training runs on every candidate model: gold-set accuracy and backdoor probes.

A gold set is a small trusted, correctly labeled sample that never enters
training. A candidate model that loses gold accuracy, or that starts to send
stamped gold inputs to one class, is rejected before it is served.

- :func:`gold_accuracy` and :func:`mean_loss` evaluate a model on a set.
- :class:`TriggerCheck` measures the success rate of a known trigger
  (a canary planted by the defender, or a trigger found in an incident).
- :class:`PatchSweepCheck` needs no knowledge of the trigger. It stamps
  small patches (solid and checkerboard, in each corner and the center) on
  the gold inputs. Its score is the largest fraction of them that any
  single patch moves to any single class. A clean model barely reacts to a small
  patch; a BadNets-style backdoor with a patch trigger near one of those
  places makes that fraction jump.

Limitations: the sweep only covers patch triggers of roughly the probed
sizes and places; blended or warped triggers need a known-trigger check.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..._validation import check_int
from ...errors import ParameterError

__all__ = ["gold_accuracy", "mean_loss", "BackdoorCheck", "TriggerCheck", "PatchSweepCheck"]

BackdoorCheck = Callable[[nn.Module], float]
"""A function of a model returning a backdoor score in [0, 1]; higher is worse."""


@torch.no_grad()
def _predict(model: nn.Module, inputs: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(inputs[start : start + batch_size]) for start in range(0, len(inputs), batch_size)])
    finally:
        model.train(was_training)


def gold_accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    """Return the model's accuracy on the gold set, computed in eval mode."""
    if len(labels) == 0:
        return 0.0
    return float((_predict(model, inputs).argmax(1) == labels).float().mean())


def mean_loss(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    """Return the mean cross-entropy of the model on a set, computed in eval mode."""
    if len(labels) == 0:
        return 0.0
    return float(F.cross_entropy(_predict(model, inputs), labels))


class TriggerCheck:
    """Success rate of a known trigger on gold inputs from other classes than its target.

    Parameters
    ----------
    apply_trigger : callable
        Maps a batch of inputs to the same inputs with the trigger, for
        example :meth:`mlwarden.attacks.poisoning.BadNetsBackdoor.apply_trigger`.
    inputs, labels : torch.Tensor
        The gold set.
    target_class : int
    """

    def __init__(
        self, apply_trigger: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, labels: torch.Tensor, target_class: int
    ) -> None:
        self.target_class = check_int(target_class, "target_class", "TriggerCheck", low=0)
        keep = labels != self.target_class
        if not bool(keep.any()):
            raise ParameterError("TriggerCheck: the gold set has no input outside the target class", value=target_class)
        self._stamped = apply_trigger(inputs[keep])

    def __call__(self, model: nn.Module) -> float:
        return float((_predict(model, self._stamped).argmax(1) == self.target_class).float().mean())


class PatchSweepCheck:
    """The largest fraction of gold inputs that one probe patch moves to one class.

    Parameters
    ----------
    inputs, labels : torch.Tensor
        The gold set, images (N, C, H, W).
    sizes : sequence of int, default (3, 4)
        Sides of the square probe patches in pixels.
    margin : int, default 1
        Distance of corner patches from the border.
    bounds : (float, float), default (0, 1)
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        *,
        sizes: Sequence[int] = (3, 4),
        margin: int = 1,
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
            raise ParameterError("PatchSweepCheck: inputs must be images (N, C, H, W)", value=tuple(getattr(inputs, "shape", ())))
        self._inputs, self._labels = inputs, labels
        self._stamped = [stamp for size in sizes for stamp in _probe_stamps(inputs, check_int(size, "sizes[]", "PatchSweepCheck", low=1), margin, bounds)]

    def __call__(self, model: nn.Module) -> float:
        clean = _predict(model, self._inputs).argmax(1)
        worst = 0.0
        for stamped in self._stamped:
            moved = _predict(model, stamped).argmax(1)
            changed = moved != clean
            for target in torch.unique(moved[changed]).tolist():
                eligible = (self._labels != target) & (clean != target)
                if bool(eligible.any()):
                    rate = float(((moved == target) & eligible).sum()) / float(eligible.sum())
                    worst = max(worst, rate)
        return worst


def _probe_stamps(inputs: torch.Tensor, size: int, margin: int, bounds: tuple[float, float]) -> list[torch.Tensor]:
    """Return copies of the inputs with a solid and a checkerboard patch at each corner and the center."""
    low, high = bounds
    _, channels, height, width = inputs.shape
    rows = torch.arange(size).view(-1, 1)
    columns = torch.arange(size).view(1, -1)
    board = torch.where((rows + columns) % 2 == 0, torch.tensor(high), torch.tensor(low)).to(inputs.dtype)
    patterns = [torch.full((size, size), high, dtype=inputs.dtype), board]
    places = [
        (margin, margin),
        (margin, width - size - margin),
        (height - size - margin, margin),
        (height - size - margin, width - size - margin),
        ((height - size) // 2, (width - size) // 2),
    ]
    stamps = []
    for pattern in patterns:
        for row, column in places:
            if row < 0 or column < 0 or row + size > height or column + size > width:
                continue
            stamped = inputs.clone()
            stamped[:, :, row : row + size, column : column + size] = pattern.expand(channels, -1, -1)
            stamps.append(stamped)
    return stamps

"""Square attack: score-based random search over square windows, in the L-inf or L2 norm.

Reference: M. Andriushchenko, F. Croce, N. Flammarion, M. Hein, "Square
Attack: a query-efficient black-box adversarial attack via random search",
ECCV 2020.

Each step changes the perturbation inside one random square window and keeps
the change only if the margin between the objective class and the best other
class drops. The window covers a fraction ``p`` of the pixels. That fraction
starts at ``p_init`` and is halved after 10, 50, 200, 500, 1000, 2000, 4000,
6000 and 8000 of 10,000 steps, rescaled to ``max_queries``.

- L-inf: the perturbation starts as vertical stripes of ``±eps``; a step sets
  the window to ``±eps``, one random sign per channel.
- L2: the perturbation starts as a grid of signed pseudo-Gaussian bumps
  scaled to norm ``eps``; a step moves the energy of a second window into the
  first, reshaped as a new bump, and rescales the whole perturbation to norm
  ``eps``.

Every candidate is ``clip(input + perturbation)``, so no query leaves the
bounds. The attack needs probabilities or logits, never gradients.

Limitations: the search is random, so a different seed gives a different
result; a model that returns rounded or top-k scores flattens the margin and
slows the attack down.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..._validation import check_choice, check_int, check_real, owner_of
from ...errors import BudgetExhausted
from ...models.query import as_query_model
from ...threat import Frequency, Goal, Knowledge, Level, Scope, Specificity, Stage, ThreatProfile
from ..base import EvasionAttack
from ..gradients import CostCounter
from ._querying import QueryTracker, SampleRandom, margin_loss
from ._windows import place_pattern, random_corners, window_mask

__all__ = ["SquareAttack", "Square"]

logger = logging.getLogger(__name__)

# Steps (out of 10,000) after which the window fraction p is halved.
_HALVING_STEPS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)

# Steps whose random draws are made at once for every sample.
_DRAW_BLOCK = 64


class SquareAttack(EvasionAttack):
    """Square attack (score-based, L-inf or L2), batched over samples.

    Parameters
    ----------
    norm : {"linf", "l2"}, default "linf"
        Norm of the budget ``eps`` given at call time.
    max_queries : int, default 1000
        Queries per sample, the first (the starting perturbation) included;
        at least 1.
    p_init : float, default 0.3
        Starting fraction of pixels in the window, in (0, 1]. The authors
        use 0.05 on 299x299 ImageNet images. Small images such as 28x28
        Fashion-MNIST need larger windows: on the shipped LeNet, 0.3 takes
        about 30% fewer queries than 0.1.
    seed : int, default 0
        Seed of the random search; a sample's draws also depend on its
        global index.

    Examples
    --------
    >>> import torch
    >>> from mlwarden.models import load_pretrained
    >>> lenet, _ = load_pretrained("lenet5")
    >>> images = torch.rand(4, 1, 28, 28)
    >>> result = SquareAttack(max_queries=50)(lenet, images, lenet(images).argmax(1), eps=0.1)
    >>> bool(result.linf.max() <= 0.1 + 1e-6), bool(result.queries_per_sample.max() <= 50)
    (True, True)
    """

    name = "square"
    needs_eps = True
    profile = ThreatProfile(
        goal=Goal.INTEGRITY,
        stage=Stage.INFERENCE,
        knowledge=Knowledge.SCORE_BASED,
        frequency=Frequency.ITERATIVE,
        specificity=(Specificity.UNTARGETED, Specificity.TARGETED),
        scope=Scope.INDIVIDUAL,
        level=Level.IMAGE,
    )

    def __init__(
        self, *, norm: str = "linf", max_queries: int = 1000, p_init: float = 0.3, seed: int = 0
    ) -> None:
        owner = owner_of(self)
        # An instance setting, which shadows the class attribute that the base class reads.
        self.norm = check_choice(norm, "norm", owner, ("linf", "l2"))  # type: ignore[misc]
        self.max_queries = check_int(max_queries, "max_queries", owner, low=1)
        self.p_init = check_real(p_init, "p_init", owner, low=0.0, high=1.0, low_inclusive=False)
        self.seed = check_int(seed, "seed", owner)

    def _window_size(self, step: int, height: int, width: int) -> int:
        """Return the side of the window at ``step``, from the halving schedule of ``p``."""
        scaled = int(step / self.max_queries * 10_000)
        fraction = self.p_init / 2 ** sum(scaled > mark for mark in _HALVING_STEPS)
        side = round((fraction * height * width) ** 0.5)
        smallest = 3 if self.norm == "l2" else 1
        return max(min(side, height - 1, width - 1), min(smallest, height - 1, width - 1), 1)

    def _run(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        targets: torch.Tensor | None,
        eps: float | None,
        bounds: tuple[float, float],
        indices: torch.Tensor,
        counter: CostCounter,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert eps is not None  # the base class requires eps (needs_eps)
        query = as_query_model(model)
        tracker = QueryTracker(query, len(inputs), self.max_queries, counter, self.name)
        random = SampleRandom(self.seed, indices)
        low, high = bounds
        everyone = torch.arange(len(inputs))
        best = inputs.clone()
        if eps == 0:
            return best, tracker.spent
        try:
            if self.norm == "linf":
                start = self._linf_start(inputs, eps, random)
            else:
                start = self._l2_start(inputs, eps, random)
            candidate = (inputs + start).clamp(low, high)
            best_margin = margin_loss(tracker.scores(candidate, everyone), labels, targets)
            best = candidate
            self._search(inputs, labels, targets, eps, bounds, tracker, random, best, best_margin)
        except BudgetExhausted as error:
            tracker.report_exhausted(error)
        return best, tracker.spent

    def _search(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        targets: torch.Tensor | None,
        eps: float,
        bounds: tuple[float, float],
        tracker: QueryTracker,
        random: SampleRandom,
        best: torch.Tensor,
        best_margin: torch.Tensor,
    ) -> None:
        """Improve ``best`` and ``best_margin`` in place until each sample is adversarial or out of queries."""
        height, width = inputs.shape[-2:]
        channels = inputs.shape[1]
        draws = torch.empty(0)
        for step in range(self.max_queries - 1):
            if step % _DRAW_BLOCK == 0:
                # Per step: two corners (row, column) of two windows, an orientation, one sign per channel.
                draws = random.uniform(_DRAW_BLOCK, 5 + channels)
            active = ((best_margin >= 0) & (tracker.left(torch.arange(len(inputs))) > 0)).nonzero().flatten()
            if len(active) == 0:
                break
            size = self._window_size(step, height, width)
            uniform = draws[active, step % _DRAW_BLOCK]
            origin = inputs[active]
            current = best[active] - origin
            if self.norm == "linf":
                proposal = self._linf_step(current, origin, uniform, size, eps, bounds)
            else:
                proposal = self._l2_step(current, uniform, size, eps)
            candidate = (origin + proposal).clamp(*bounds)
            sub_targets = None if targets is None else targets[active]
            margin = margin_loss(tracker.scores(candidate, active), labels[active], sub_targets)
            improved = margin < best_margin[active]
            accepted = active[improved]
            best[accepted] = candidate[improved]
            best_margin[accepted] = margin[improved]

    # --- L-inf ------------------------------------------------------------------------------

    @staticmethod
    def _linf_start(inputs: torch.Tensor, eps: float, random: SampleRandom) -> torch.Tensor:
        """Return vertical stripes of ±eps, one random sign per channel and column."""
        count, channels, height, width = inputs.shape
        signs = torch.where(random.uniform(channels, 1, width) < 0.5, -1.0, 1.0)
        return (eps * signs).expand(count, channels, height, width).clone()

    @staticmethod
    def _linf_step(
        current: torch.Tensor,
        origin: torch.Tensor,
        uniform: torch.Tensor,
        size: int,
        eps: float,
        bounds: tuple[float, float],
    ) -> torch.Tensor:
        """Return the perturbation with one window set to ±eps per channel."""
        height, width = current.shape[-2:]
        channels = current.shape[1]
        rows = random_corners(uniform[:, 0], size, height)
        cols = random_corners(uniform[:, 1], size, width)
        mask = window_mask(rows, cols, size, height, width)
        signs = torch.where(uniform[:, 5 : 5 + channels] < 0.5, -1.0, 1.0).view(-1, channels, 1, 1)

        # A window whose clipped values would not change wastes a query: flip its signs instead.
        low, high = bounds
        before = (origin + current).clamp(low, high)
        after = (origin + eps * signs).clamp(low, high)
        unchanged = ((after - before).abs() < 1e-7) | ~mask
        signs = torch.where(unchanged.flatten(1).all(dim=1).view(-1, 1, 1, 1), -signs, signs)
        return torch.where(mask, eps * signs, current)

    # --- L2 ---------------------------------------------------------------------------------

    @staticmethod
    def _l2_start(inputs: torch.Tensor, eps: float, random: SampleRandom) -> torch.Tensor:
        """Return a grid of bumps with random signs per block and channel, scaled to norm eps."""
        count, channels, height, width = inputs.shape
        block = max(min(height, width) // 5, 3)
        bump = _pseudo_gaussian(block, block)
        blocks_down = -(-height // block)
        blocks_across = -(-width // block)
        signs = torch.where(random.uniform(channels, blocks_down, blocks_across) < 0.5, -1.0, 1.0)
        grid = signs.repeat_interleave(block, dim=2).repeat_interleave(block, dim=3)
        tiled = bump.repeat(blocks_down, blocks_across)
        start = (grid * tiled)[:, :, :height, :width]
        return _scale_to_norm(start, eps)

    @staticmethod
    def _l2_step(current: torch.Tensor, uniform: torch.Tensor, size: int, eps: float) -> torch.Tensor:
        """Return the perturbation with the energy of a second window moved into a reshaped first window."""
        height, width = current.shape[-2:]
        channels = current.shape[1]
        rows = random_corners(uniform[:, 0], size, height)
        cols = random_corners(uniform[:, 1], size, width)
        rows_source = random_corners(uniform[:, 2], size, height)
        cols_source = random_corners(uniform[:, 3], size, width)
        target_mask = window_mask(rows, cols, size, height, width)
        both_mask = target_mask | window_mask(rows_source, cols_source, size, height, width)

        # Energy the window may hold: what both windows hold now, plus what the budget leaves unused.
        unused = (eps**2 - current.flatten(1).pow(2).sum(1)).clamp_min(0)
        window_energy = (current * both_mask).pow(2).flatten(2).sum(2)
        energy = (unused[:, None] / channels + window_energy).sqrt()

        # The new window content: a signed bump, plus the window's current direction.
        bump = _meta_pseudo_gaussian(size, transpose=uniform[:, 4] < 0.5)
        signs = torch.where(uniform[:, 5 : 5 + channels] < 0.5, -1.0, 1.0).view(-1, channels, 1, 1)
        window_now = current * target_mask
        window_norm = window_now.flatten(2).norm(dim=2).clamp_min(1e-10)
        placed, _ = place_pattern(bump * signs, rows, cols, height, width)
        content = placed + window_now / window_norm[:, :, None, None]
        content_norm = content.flatten(2).norm(dim=2).clamp_min(1e-10)
        content = content * (energy / content_norm)[:, :, None, None]

        updated = torch.where(both_mask, torch.zeros_like(current), current)
        updated = torch.where(target_mask, content, updated)
        return _scale_to_norm(updated, eps)


def _pseudo_gaussian(rows: int, cols: int) -> torch.Tensor:
    """Return a unit-norm bump whose rings, at Chebyshev distance k from the centre, weigh sum_{j>=k} 1/(j+1)^2."""
    row_distance = (torch.arange(rows, dtype=torch.float32) - (rows - 1) / 2).abs()
    col_distance = (torch.arange(cols, dtype=torch.float32) - (cols - 1) / 2).abs()
    ring = torch.maximum(row_distance[:, None], col_distance[None, :]).floor().to(torch.int64)
    weights = 1.0 / (torch.arange(int(ring.max()) + 1, dtype=torch.float32) + 1) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)
    bump = tail[ring]
    return bump / bump.norm()


def _meta_pseudo_gaussian(size: int, transpose: torch.Tensor) -> torch.Tensor:
    """Return (N, 1, size, size) unit-norm patterns: two bumps of opposite sign, one above the other.

    Where ``transpose`` is True the bumps sit side by side instead.
    """
    half = size // 2
    pattern = torch.cat([_pseudo_gaussian(half, size), -_pseudo_gaussian(size - half, size)], dim=0)
    pattern = pattern / pattern.norm()
    return torch.where(transpose.view(-1, 1, 1, 1), pattern.T, pattern)


def _scale_to_norm(perturbation: torch.Tensor, norm: float) -> torch.Tensor:
    """Return the perturbation scaled so that each sample's L2 norm is ``norm``."""
    norms = perturbation.flatten(1).norm(dim=1).clamp_min(1e-12)
    return perturbation * (norm / norms).view(-1, *([1] * (perturbation.dim() - 1)))


Square = SquareAttack

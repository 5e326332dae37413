"""SimBA: simple score-based black-box attack along random orthonormal directions.

Reference: C. Guo, J. R. Gardner, Y. You, A. G. Wilson, K. Q. Weinberger,
"Simple Black-box Adversarial Attacks", ICML 2019.

Each step picks the next direction ``q`` of a random order over an
orthonormal basis and tries ``input - step_size * q``, then, if that did not
lower the probability of the true class (raise that of the target),
``input + step_size * q``. A step that helps is kept. Directions are the
pixel basis (``basis="pixel"``) or the 2-D DCT basis with low frequencies
first (``basis="dct"``, SimBA-DCT). Since the directions are orthonormal,
the L2 norm of the perturbation after ``k`` kept steps is at most
``step_size * sqrt(k)``.

Candidates are clipped to the bounds before they are queried. A direction
whose clipped step changes nothing (a pixel already at 0 stepped down) is
skipped without spending a query. With ``eps`` given, steps that would take
the perturbation past ``eps`` in L2 are skipped too.

Limitations: SimBA reads the probability of one class, so a model that
returns only labels defeats it (use HopSkipJump); each direction is tried
once, so the attack ends after ``2 * C * H * W`` queries at most.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from ..._validation import check_choice, check_int, check_real, owner_of
from ...errors import BudgetExhausted
from ...models.query import as_query_model
from ...threat import Frequency, Goal, Knowledge, Level, Scope, Specificity, Stage, ThreatProfile
from ..base import EvasionAttack
from ..gradients import CostCounter
from ._querying import QueryTracker, SampleRandom, is_adversarial, objective_class

__all__ = ["SimpleBlackBoxAttack", "SimBA"]

logger = logging.getLogger(__name__)

# Perturbation norms may exceed eps by this much from float rounding.
_NORM_TOLERANCE = 1e-5


class SimpleBlackBoxAttack(EvasionAttack):
    """SimBA and SimBA-DCT (score-based), batched over samples.

    Parameters
    ----------
    step_size : float, default 0.2
        L2 length of each step along a basis direction, > 0.
    max_queries : int, default 1000
        Queries per sample, the first (the clean scores) included; at least 1.
    basis : {"pixel", "dct"}, default "pixel"
        Directions searched: single pixels, or 2-D DCT frequencies ordered
        from low to high.
    seed : int, default 0
        Seed of the direction order; a sample's order also depends on its
        global index.

    Notes
    -----
    ``eps``, when given at call time, caps the L2 norm of the perturbation.
    Without it the perturbation grows until the sample is adversarial or
    out of queries.

    Examples
    --------
    >>> import torch
    >>> from mlwarden.models import load_pretrained
    >>> lenet, _ = load_pretrained("lenet5")
    >>> images = torch.rand(4, 1, 28, 28)
    >>> result = SimBA(max_queries=100)(lenet, images, lenet(images).argmax(1))
    >>> bool(result.queries_per_sample.max() <= 100)
    True
    """

    name = "simba"
    norm = "l2"
    needs_eps = False
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
        self, *, step_size: float = 0.2, max_queries: int = 1000, basis: str = "pixel", seed: int = 0
    ) -> None:
        owner = owner_of(self)
        self.step_size = check_real(step_size, "step_size", owner, low=0.0, low_inclusive=False)
        self.max_queries = check_int(max_queries, "max_queries", owner, low=1)
        self.basis = check_choice(basis, "basis", owner, ("pixel", "dct"))
        self.seed = check_int(seed, "seed", owner)

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
        query = as_query_model(model)
        tracker = QueryTracker(query, len(inputs), self.max_queries, counter, self.name)
        directions = _Directions(self.basis, inputs.shape[1:], SampleRandom(self.seed, indices))
        chosen = objective_class(labels, targets)
        rows = torch.arange(len(inputs))
        best = inputs.clone()
        try:
            scores = tracker.scores(inputs, rows)
            probability = scores[rows, chosen]
            done = is_adversarial(scores.argmax(1), labels, targets)
            for position in range(directions.count):
                active = (~done & (tracker.left(rows) > 0)).nonzero().flatten()
                if len(active) == 0:
                    break
                step = self.step_size * directions.at(active, position)
                for sign in (-1.0, 1.0):
                    trying, candidate = self._candidates(active, step, sign, inputs, best, eps, bounds, tracker)
                    if len(trying) == 0:
                        continue
                    new_scores = tracker.scores(candidate, trying)
                    new_probability = new_scores[torch.arange(len(trying)), chosen[trying]]
                    better = new_probability < probability[trying] if targets is None else new_probability > probability[trying]
                    accepted = trying[better]
                    best[accepted] = candidate[better]
                    probability[accepted] = new_probability[better]
                    accepted_targets = None if targets is None else targets[accepted]
                    done[accepted] = is_adversarial(new_scores[better].argmax(1), labels[accepted], accepted_targets)
                    # Samples that improved with the first sign do not try the second.
                    improved = torch.zeros(len(inputs), dtype=torch.bool)
                    improved[accepted] = True
                    keep_trying = ~improved[active]
                    active, step = active[keep_trying], step[keep_trying]
        except BudgetExhausted as error:
            tracker.report_exhausted(error)
        return best, tracker.spent

    @staticmethod
    def _candidates(
        active: torch.Tensor,
        step: torch.Tensor,
        sign: float,
        inputs: torch.Tensor,
        best: torch.Tensor,
        eps: float | None,
        bounds: tuple[float, float],
        tracker: QueryTracker,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the samples worth a query for this sign, and their clipped candidates."""
        candidate = (best[active] + sign * step).clamp(*bounds)
        moves = (candidate - best[active]).flatten(1).abs().amax(dim=1) > 1e-7
        worth = moves & (tracker.left(active) > 0)
        if eps is not None:
            norms = (candidate - inputs[active]).flatten(1).norm(dim=1)
            worth &= norms <= eps + _NORM_TOLERANCE
        return active[worth], candidate[worth]


class _Directions:
    """The per-sample random order over an orthonormal basis, and the basis vectors at each position."""

    def __init__(self, basis: str, shape: torch.Size, random: SampleRandom) -> None:
        channels, height, width = shape
        self.shape = (channels, height, width)
        self.count = channels * height * width
        self.basis = basis
        if basis == "pixel":
            self.order = random.permutation(self.count)
            return
        # DCT: frequencies (u, v) sorted by max(u, v), in random order within each ring.
        frequency_rows = torch.arange(height)[:, None].expand(height, width)
        frequency_cols = torch.arange(width)[None, :].expand(height, width)
        ring = torch.maximum(frequency_rows, frequency_cols).flatten().repeat(channels).to(torch.float32)
        tie_break = random.uniform(self.count)
        self.order = (ring[None, :] + tie_break).argsort(dim=1)
        self.row_transform = _dct_matrix(height)
        self.col_transform = _dct_matrix(width)

    def at(self, rows: torch.Tensor, position: int) -> torch.Tensor:
        """Return the unit basis vectors (len(rows), C, H, W) at ``position`` of each sample's order."""
        channels, height, width = self.shape
        coordinate = self.order[rows, position]
        vectors = torch.zeros(len(rows), channels, height, width)
        channel = coordinate // (height * width)
        within = coordinate % (height * width)
        if self.basis == "pixel":
            vectors.view(len(rows), -1)[torch.arange(len(rows)), coordinate] = 1.0
            return vectors
        row_wave = self.row_transform[within // width]
        col_wave = self.col_transform[within % width]
        vectors[torch.arange(len(rows)), channel] = row_wave[:, :, None] * col_wave[:, None, :]
        return vectors


def _dct_matrix(size: int) -> torch.Tensor:
    """Return the orthonormal DCT-II matrix; row k is the k-th cosine basis vector."""
    positions = torch.arange(size, dtype=torch.float64)
    frequencies = torch.arange(size, dtype=torch.float64)[:, None]
    matrix = torch.cos(math.pi * (2 * positions[None, :] + 1) * frequencies / (2 * size))
    matrix[0] *= math.sqrt(1 / size)
    matrix[1:] *= math.sqrt(2 / size)
    return matrix.to(torch.float32)


SimBA = SimpleBlackBoxAttack

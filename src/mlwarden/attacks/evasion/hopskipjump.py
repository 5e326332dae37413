"""HopSkipJump: decision-based attack that walks along the decision boundary (L2 or L-inf).

Reference: J. Chen, M. I. Jordan, M. J. Wainwright, "HopSkipJumpAttack: a
query-efficient decision-based attack", IEEE Symposium on Security and
Privacy 2020.

The attack reads only the top label. It starts from an adversarial point (a
random image for untargeted runs, an image of the target class for targeted
runs), then repeats three moves:

1. a binary search between the input and the adversarial point, which
   lands on the boundary (on the segment for L2; on the L-inf projection of
   shrinking radius for L-inf);
2. an estimate of the boundary's normal from the labels of ``B_t`` random
   probes around the boundary point, ``B_t = init_evals * sqrt(t)``;
3. a geometric step along that normal (its sign for L-inf), halved until
   the point is adversarial again.

Every point the attack keeps was adversarial when queried, so it returns
either such a point or the unchanged input, never a rejected candidate.
With ``eps`` given, a sample stops once its distance is within ``eps``, and a
sample that never gets there is returned unchanged.

Limitations: the random start needs a class change from uniform noise; a
model that maps all noise to the true class leaves those samples
unattacked. Targeted runs need an image of the target class: call
:meth:`HopSkipJump.fit_starting_points` (``assess`` does it from the training
split) or they start from noise. Its label queries are spent once, not per
sample, and are kept in ``fitting_queries``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from ..._validation import check_choice, check_int, check_real, owner_of
from ...errors import BudgetExhausted, ParameterError
from ...models.query import as_query_model
from ...threat import Frequency, Goal, Knowledge, Level, Scope, Specificity, Stage, ThreatProfile
from ..base import EvasionAttack
from ..gradients import CostCounter
from ._querying import QueryTracker, SampleRandom, is_adversarial

__all__ = ["HopSkipJump", "HSJA"]

logger = logging.getLogger(__name__)

# Halvings of the geometric step before an iteration gives up on a sample.
_MAX_HALVINGS = 10

# Minimum probes per gradient estimate when a sample's queries run low.
_MIN_EVALS = 10

# Training images scanned for starting points of targeted runs.
_STARTING_POOL = 1000

# Salt of the generator that shuffles the training split for starting points.
_STARTING_SALT = 41


class HopSkipJump(EvasionAttack):
    """HopSkipJump (decision-based, L2 or L-inf), batched over samples.

    Parameters
    ----------
    norm : {"l2", "linf"}, default "l2"
        Distance the attack minimizes.
    max_queries : int, default 1000
        Label queries per sample, the random start included; at least 1.
    steps : int, default 100
        Boundary-walk iterations at most.
    init_evals : int, default 100
        Probes of the first gradient estimate; iteration ``t`` uses
        ``init_evals * sqrt(t)``, capped at ``max_evals``.
    max_evals : int, default 10000
    gamma : float, default 1.0
        Sets the binary-search precision ``theta = gamma / d^1.5`` (L2) or
        ``gamma / d^2`` (L-inf) for ``d`` input elements, and the probe radius.
    init_trials : int, default 100
        Random images tried per sample to find a starting point.
    seed : int, default 0

    Examples
    --------
    >>> import torch
    >>> from mlwarden.models import load_pretrained
    >>> from mlwarden.models.query import ModuleQueryModel
    >>> lenet, _ = load_pretrained("lenet5")
    >>> api = ModuleQueryModel(lenet, labels_only=True)
    >>> images = torch.rand(2, 1, 28, 28)
    >>> result = HSJA(max_queries=300)(api, images, api(images).argmax(1))
    >>> bool(result.queries_per_sample.max() <= 300)
    True
    """

    name = "hsja"
    needs_eps = False
    profile = ThreatProfile(
        goal=Goal.INTEGRITY,
        stage=Stage.INFERENCE,
        knowledge=Knowledge.DECISION_BASED,
        frequency=Frequency.ITERATIVE,
        specificity=(Specificity.UNTARGETED, Specificity.TARGETED),
        scope=Scope.INDIVIDUAL,
        level=Level.IMAGE,
    )

    def __init__(
        self,
        *,
        norm: str = "l2",
        max_queries: int = 1000,
        steps: int = 100,
        init_evals: int = 100,
        max_evals: int = 10_000,
        gamma: float = 1.0,
        init_trials: int = 100,
        seed: int = 0,
    ) -> None:
        owner = owner_of(self)
        # An instance setting, which shadows the class attribute that the base class reads.
        self.norm = check_choice(norm, "norm", owner, ("l2", "linf"))  # type: ignore[misc]
        self.max_queries = check_int(max_queries, "max_queries", owner, low=1)
        self.steps = check_int(steps, "steps", owner, low=1)
        self.init_evals = check_int(init_evals, "init_evals", owner, low=1)
        self.max_evals = check_int(max_evals, "max_evals", owner, low=1)
        if self.max_evals < self.init_evals:
            raise ParameterError(
                f"{owner}: max_evals must be >= init_evals ({self.init_evals}), got {self.max_evals}", value=max_evals
            )
        self.gamma = check_real(gamma, "gamma", owner, low=0.0, low_inclusive=False)
        self.init_trials = check_int(init_trials, "init_trials", owner, low=0)
        self.seed = check_int(seed, "seed", owner)
        self._starting_points: dict[int, torch.Tensor] = {}
        self._pool: torch.Tensor | None = None
        # Label queries spent choosing starting points, once for all samples.
        self.fitting_queries = 0

    def settings(self) -> dict[str, object]:
        """Return the constructor settings, without the starting points and the fitting cost."""
        fitted = ("starting_points", "pool", "fitting_queries")
        return {key: value for key, value in super().settings().items() if key not in fitted}

    # --- starting points of targeted runs ---------------------------------------------------

    def fit_starting_points(self, model: nn.Module, images: torch.Tensor) -> dict[int, torch.Tensor]:
        """Keep, for each class, the first of ``images`` that the model labels as that class.

        Spends one label query per image, added to ``fitting_queries``; a
        targeted run then starts each sample from the kept image of its
        target class.
        """
        query = as_query_model(model)
        predicted = query.predict_labels(images)
        self.fitting_queries += len(images)
        self._starting_points = {}
        for image, label in zip(images, predicted.tolist()):
            self._starting_points.setdefault(int(label), image.clone())
        logger.info("%s: starting points for classes %s", self.name, sorted(self._starting_points))
        return dict(self._starting_points)

    def prepare(self, model: nn.Module, context: Any) -> None:
        """Keep training images to draw starting points from (``assess`` calls this once).

        The starting points are chosen, with one label query per kept image,
        only when a targeted call needs them.
        """
        train = context.train()
        order = torch.randperm(len(train), generator=context.generator(salt=_STARTING_SALT))
        self._pool = train.images[order[:_STARTING_POOL]]
        self._starting_points = {}
        self.fitting_queries = 0

    # --- the attack -------------------------------------------------------------------------

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
        if targets is not None and not self._starting_points and self._pool is not None:
            self.fit_starting_points(model, self._pool)
        walk = _BoundaryWalk(self, as_query_model(model), inputs, labels, targets, eps, bounds, indices, counter)
        try:
            walk.start(self._starting_points)
            walk.iterate()
        except BudgetExhausted as error:
            walk.tracker.report_exhausted(error)
        return walk.result(), walk.tracker.spent


class _BoundaryWalk:
    """State of one HopSkipJump call: the boundary point and its distance for every sample."""

    def __init__(
        self,
        attack: HopSkipJump,
        query: Any,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        targets: torch.Tensor | None,
        eps: float | None,
        bounds: tuple[float, float],
        indices: torch.Tensor,
        counter: CostCounter,
    ) -> None:
        self.attack = attack
        self.inputs = inputs
        self.labels = labels
        self.targets = targets
        self.eps = eps
        self.bounds = bounds
        self.tracker = QueryTracker(query, len(inputs), attack.max_queries, counter, attack.name)
        self.random = SampleRandom(attack.seed, indices)
        self.dimension = inputs[0].numel()
        exponent = 1.5 if attack.norm == "l2" else 2.0
        self.theta = attack.gamma / self.dimension**exponent
        self.search_steps = math.ceil(math.log2(1 / self.theta))
        self.found = torch.zeros(len(inputs), dtype=torch.bool)
        self.point = inputs.clone()
        self.distance = torch.full((len(inputs),), float("inf"))

    # --- verified queries -----------------------------------------------------------------

    def _adversarial(self, points: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        predicted = self.tracker.labels(points, rows)
        targets = None if self.targets is None else self.targets[rows]
        return is_adversarial(predicted, self.labels[rows], targets)

    def _distance(self, points: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        delta = (points - self.inputs[rows]).flatten(1)
        return delta.norm(dim=1) if self.attack.norm == "l2" else delta.abs().amax(dim=1)

    def _everyone(self) -> torch.Tensor:
        return torch.arange(len(self.inputs))

    # --- start ------------------------------------------------------------------------------

    def start(self, starting_points: dict[int, torch.Tensor]) -> None:
        """Find an adversarial point for every sample, then move it onto the boundary."""
        everyone = self._everyone()
        candidate = self.inputs.clone()
        if self.targets is not None and starting_points:
            has_start = torch.tensor([int(t) in starting_points for t in self.targets.tolist()], dtype=torch.bool)
            rows = has_start.nonzero().flatten()
            if len(rows):
                candidate[rows] = torch.stack([starting_points[int(t)] for t in self.targets[rows].tolist()])
                self.found[rows[self._adversarial(candidate[rows], rows)]] = True
        low, high = self.bounds
        for _ in range(self.attack.init_trials):
            noise = low + (high - low) * self.random.uniform(*self.inputs.shape[1:])
            rows = (~self.found & (self.tracker.left(everyone) > 0)).nonzero().flatten()
            if len(rows) == 0:
                break
            hit = self._adversarial(noise[rows], rows)
            candidate[rows[hit]] = noise[rows[hit]]
            self.found[rows[hit]] = True
        missing = int((~self.found).sum())
        if missing:
            logger.info("%s: no starting point for %d of %d samples", self.attack.name, missing, len(self.inputs))
        rows = self.found.nonzero().flatten()
        self.point[rows] = candidate[rows]
        self.distance[rows] = self._distance(candidate[rows], rows)
        self._search_boundary(rows)

    # --- binary search --------------------------------------------------------------------

    def _project(self, rows: torch.Tensor, adversarial: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """Return the point at fraction ``alpha`` of the way from each input towards ``adversarial``."""
        origin = self.inputs[rows]
        shape = (-1,) + (1,) * (origin.dim() - 1)
        if self.attack.norm == "l2":
            return (1 - alpha.view(shape)) * origin + alpha.view(shape) * adversarial
        radius = (adversarial - origin).flatten(1).abs().amax(dim=1)
        limit = (alpha * radius).view(shape)
        return origin + torch.maximum(torch.minimum(adversarial - origin, limit), -limit)

    def _search_boundary(self, rows: torch.Tensor) -> None:
        """Move each sample's adversarial point to the boundary by bisection, keeping the adversarial end."""
        if len(rows) == 0:
            return
        adversarial = self.point[rows].clone()
        low = torch.zeros(len(rows))
        high = torch.ones(len(rows))
        for _ in range(self.search_steps):
            searching = ((high - low) > self.theta) & (self.tracker.left(rows) > 0)
            if not bool(searching.any()):
                break
            local = searching.nonzero().flatten()
            middle = (low[local] + high[local]) / 2
            hit = self._adversarial(self._project(rows[local], adversarial[local], middle), rows[local])
            high[local] = torch.where(hit, middle, high[local])
            low[local] = torch.where(hit, low[local], middle)
        boundary = self._project(rows, adversarial, high)
        self.point[rows] = boundary
        self.distance[rows] = self._distance(boundary, rows)

    # --- iterations -------------------------------------------------------------------------

    def _reserve(self) -> int:
        """Return the queries an iteration needs beyond its gradient probes."""
        return _MAX_HALVINGS + self.search_steps

    def iterate(self) -> None:
        """Walk along the boundary until each sample runs out of queries or steps (or reaches eps)."""
        everyone = self._everyone()
        for step in range(1, self.attack.steps + 1):
            scheduled = min(int(self.attack.init_evals * math.sqrt(step)), self.attack.max_evals)
            evals = (self.tracker.left(everyone) - self._reserve()).clamp(max=scheduled)
            working = self.found & (evals >= min(_MIN_EVALS, scheduled))
            if self.eps is not None:
                working &= self.distance > self.eps
            rows = working.nonzero().flatten()
            if len(rows) == 0:
                break
            direction = self._estimate_direction(rows, evals[rows], step)
            self._geometric_step(rows, direction, step)
            self._search_boundary(rows)

    def _estimate_direction(self, rows: torch.Tensor, evals: torch.Tensor, step: int) -> torch.Tensor:
        """Return the update direction at each boundary point from the labels of random probes."""
        shape = self.inputs.shape[1:]
        low, high = self.bounds
        if step == 1:
            radius = torch.full((len(rows),), 0.1 * (high - low))
        else:
            scale = math.sqrt(self.dimension) if self.attack.norm == "l2" else self.dimension
            radius = scale * self.theta * self.distance[rows]
        if self.attack.norm == "l2":
            probes = self.random.normal_each(rows, evals, *shape)
        else:
            probes = 2 * self.random.uniform_each(rows, evals, *shape) - 1
        probes = probes / probes.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * len(shape)))
        owner = torch.arange(len(rows)).repeat_interleave(evals)
        radius_each = radius[owner].view(-1, *([1] * len(shape)))
        points = (self.point[rows][owner] + radius_each * probes).clamp(low, high)
        # Clipping shortens some probes: use the directions actually taken.
        effective = (points - self.point[rows][owner]) / radius_each
        signs = torch.where(self._adversarial(points, rows[owner]), 1.0, -1.0)

        # Subtract each sample's mean sign as a baseline, unless all its probes agree.
        totals = torch.zeros(len(rows)).index_add_(0, owner, signs)
        means = totals / evals
        mixed = means.abs() < 1
        centred = signs - torch.where(mixed, means, torch.zeros_like(means))[owner]
        gradient = torch.zeros(len(rows), *shape).index_add_(0, owner, centred.view(-1, *([1] * len(shape))) * effective)
        if self.attack.norm == "linf":
            return gradient.sign()
        return gradient / gradient.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * len(shape)))

    def _geometric_step(self, rows: torch.Tensor, direction: torch.Tensor, step: int) -> None:
        """Step from the boundary along ``direction``, halving the step until the point is adversarial."""
        low, high = self.bounds
        size = self.distance[rows] / math.sqrt(step)
        pending = torch.ones(len(rows), dtype=torch.bool)
        shape = (-1,) + (1,) * (direction.dim() - 1)
        for _ in range(_MAX_HALVINGS):
            local = (pending & (self.tracker.left(rows) > 0)).nonzero().flatten()
            if len(local) == 0:
                break
            candidate = (self.point[rows[local]] + size[local].view(shape) * direction[local]).clamp(low, high)
            hit = self._adversarial(candidate, rows[local])
            self.point[rows[local[hit]]] = candidate[hit]
            pending[local[hit]] = False
            size[local[~hit]] /= 2

    def result(self) -> torch.Tensor:
        """Return the boundary points of the samples that have one (within eps, if given), else the inputs."""
        keep = self.found.clone()
        if self.eps is not None:
            keep &= self.distance <= self.eps * (1 + 1e-6)
        return torch.where(keep.view(-1, *([1] * (self.inputs.dim() - 1))), self.point, self.inputs)


HSJA = HopSkipJump

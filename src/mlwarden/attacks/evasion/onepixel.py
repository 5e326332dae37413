"""One-pixel attack: change a few pixels, chosen by differential evolution on the model's scores.

Reference: J. Su, D. V. Vargas, K. Sakurai, "One pixel attack for fooling deep
neural networks", IEEE Transactions on Evolutionary Computation, 2019.

A candidate sets ``pixels`` pixels, each given by its row, column and one
value per channel, all encoded in [0, 1]. A population of candidates evolves
by DE/rand/1: for each member, a trial ``a + differential_weight * (b - c)``
from three other random members replaces it when it lowers the margin of the
true class over the others (raises the target's margin). A sample stops at
the first member that fools the model.

The defaults follow the paper: no crossover (``crossover=1.0`` takes every
pixel from the trial) and values searched by the evolution. Two options go
beyond it. With ``crossover`` below 1, a trial keeps each pixel of the
member with probability ``1 - crossover``. With ``values="extreme"``, every
changed pixel goes to the bound farthest from its current value, so the
evolution searches positions only, which on gray images finds adversarial
pixels far sooner.

Limitations: with one pixel the attack succeeds on a minority of samples of
most models (the paper reports 68% of CIFAR-10 images on its weakest
network, with a population of 400 and 100 generations; on the shipped
Fashion-MNIST LeNet it is about 5% within 2,000 queries). More pixels, the
``extreme`` values or a larger budget raise that. The search needs scores,
not only labels.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..._validation import check_choice, check_int, check_real, owner_of
from ...errors import BudgetExhausted, ParameterError
from ...models.query import as_query_model
from ...threat import Frequency, Goal, Knowledge, Level, Scope, Specificity, Stage, ThreatProfile
from ..base import EvasionAttack
from ..gradients import CostCounter
from ._querying import QueryTracker, SampleRandom, is_adversarial, margin_loss

__all__ = ["OnePixelAttack", "OnePixel"]

logger = logging.getLogger(__name__)


class OnePixelAttack(EvasionAttack):
    """One-pixel (few-pixel) attack by differential evolution (score-based), batched over samples.

    Parameters
    ----------
    pixels : int, default 1
        Pixels changed per image (all channels of each), at least 1.
    population : int, default 100
        Candidates per sample, at least 4 (DE/rand/1 draws three others).
    max_queries : int, default 2000
        Queries per sample, at least ``population``: the starting
        population, then ``population`` per generation while queries last.
    differential_weight : float, default 0.5
        Scale F of the difference vector, in (0, 2].
    crossover : float, default 1.0
        Probability that a trial takes each pixel from the mutant rather
        than from the member, in (0, 1]; one random pixel always comes from
        the mutant. 1.0 is the paper's DE without crossover.
    values : {"search", "extreme"}, default "search"
        ``search`` evolves each pixel's value; ``extreme`` sets each changed
        pixel to the bound farthest from its current value.
    seed : int, default 0

    Examples
    --------
    >>> import torch
    >>> from mlwarden.models import load_pretrained
    >>> lenet, _ = load_pretrained("lenet5")
    >>> images = torch.rand(2, 1, 28, 28)
    >>> result = OnePixelAttack(pixels=2, population=20, max_queries=100)(lenet, images, lenet(images).argmax(1))
    >>> bool(result.l0.max() <= 2)
    True
    """

    name = "onepixel"
    norm = "l0"
    needs_eps = False
    budget_hint = "set pixels, the number of pixels it may change"
    profile = ThreatProfile(
        goal=Goal.INTEGRITY,
        stage=Stage.INFERENCE,
        knowledge=Knowledge.SCORE_BASED,
        frequency=Frequency.ITERATIVE,
        specificity=(Specificity.UNTARGETED, Specificity.TARGETED),
        scope=Scope.INDIVIDUAL,
        level=Level.PIXEL,
    )

    def __init__(
        self,
        *,
        pixels: int = 1,
        population: int = 100,
        max_queries: int = 2000,
        differential_weight: float = 0.5,
        crossover: float = 1.0,
        values: str = "search",
        seed: int = 0,
    ) -> None:
        owner = owner_of(self)
        self.pixels = check_int(pixels, "pixels", owner, low=1)
        self.population = check_int(population, "population", owner, low=4)
        self.max_queries = check_int(max_queries, "max_queries", owner, low=1)
        if self.max_queries < self.population:
            raise ParameterError(
                f"{owner}: max_queries must be at least population ({self.population}) to evaluate the starting "
                f"population, got {self.max_queries}",
                value=max_queries,
            )
        self.differential_weight = check_real(
            differential_weight, "differential_weight", owner, low=0.0, high=2.0, low_inclusive=False
        )
        self.crossover = check_real(crossover, "crossover", owner, low=0.0, high=1.0, low_inclusive=False)
        self.values = check_choice(values, "values", owner, ("search", "extreme"))
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
        random = SampleRandom(self.seed, indices)
        channels = inputs.shape[1]
        size = self.population
        genes = 2 + channels
        best = inputs.clone()
        everyone = torch.arange(len(inputs))
        try:
            members = random.uniform(size, self.pixels, genes)
            fitness, fooled = self._evaluate(members, everyone, inputs, labels, targets, bounds, tracker)
            done = self._keep_fooling(members, fitness, fooled, everyone, inputs, bounds, best)
            while True:
                active = (~done & (tracker.left(everyone) >= size)).nonzero().flatten()
                # Draws are made for every sample each generation, so a sample's stream ignores the others.
                choice = random.uniform(size, size - 1)
                mixing = random.uniform(size, self.pixels + 1)
                if len(active) == 0:
                    break
                trials = self._trials(members[active], choice[active], mixing[active])
                trial_fitness, trial_fooled = self._evaluate(trials, active, inputs, labels, targets, bounds, tracker)
                better = trial_fitness < fitness[active]
                members[active] = torch.where(better[..., None, None], trials, members[active])
                fitness[active] = torch.where(better, trial_fitness, fitness[active])
                done |= self._keep_fooling(trials, trial_fitness, trial_fooled, active, inputs, bounds, best)
        except BudgetExhausted as error:
            tracker.report_exhausted(error)
        return best, tracker.spent

    def _trials(self, members: torch.Tensor, choice: torch.Tensor, mixing: torch.Tensor) -> torch.Tensor:
        """Return DE/rand/1 trials: for member i, a + F * (b - c) with a, b, c distinct and not i.

        ``choice`` (M, P, P - 1) picks a, b and c. ``mixing`` (M, P, pixels + 1)
        decides which pixels come from the mutant, and its last column picks
        the pixel that always does.
        """
        size = self.population
        picked = choice.topk(3, dim=-1).indices
        # Indices drawn from the size - 1 other members: shift those at or past i by one.
        own = torch.arange(size).view(1, size, 1)
        picked = picked + (picked >= own).to(torch.int64)
        batch = torch.arange(members.shape[0])[:, None]
        first, second, third = (members[batch, picked[..., column]] for column in range(3))
        mutants = (first + self.differential_weight * (second - third)).clamp(0.0, 1.0 - 1e-6)
        if self.crossover >= 1.0:
            return mutants
        from_mutant = mixing[..., : self.pixels] < self.crossover
        forced = (mixing[..., self.pixels] * self.pixels).floor().clamp(max=self.pixels - 1).to(torch.int64)
        from_mutant |= torch.nn.functional.one_hot(forced, self.pixels).bool()
        return torch.where(from_mutant[..., None], mutants, members)

    def _apply(self, members: torch.Tensor, inputs: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
        """Return the images (M, P, C, H, W) that the candidates (M, P, pixels, 2 + C) describe."""
        count, size = members.shape[:2]
        channels, height, width = inputs.shape[1:]
        low, high = bounds
        rows = (members[..., 0] * height).floor().clamp(0, height - 1).to(torch.int64)
        cols = (members[..., 1] * width).floor().clamp(0, width - 1).to(torch.int64)
        position = rows * width + cols
        channel_offset = torch.arange(channels) * height * width
        flat_index = (position[..., None] + channel_offset).flatten(2)
        images = inputs[:, None].expand(count, size, channels, height, width).reshape(count, size, -1).clone()
        if self.values == "extreme":
            current = images.gather(2, flat_index).view(count, size, self.pixels, channels)
            values = torch.where(current - low < high - current, high, low)
        else:
            values = low + (high - low) * members[..., 2:]
        images.scatter_(2, flat_index, values.flatten(2))
        return images.view(count, size, channels, height, width)

    def _evaluate(
        self,
        members: torch.Tensor,
        rows: torch.Tensor,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        targets: torch.Tensor | None,
        bounds: tuple[float, float],
        tracker: QueryTracker,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return each candidate's fitness (lower is better) and whether it fools the model."""
        size = self.population
        images = self._apply(members, inputs[rows], bounds)
        owner = rows.repeat_interleave(size)
        scores = tracker.scores(images.flatten(0, 1), owner).view(len(rows), size, -1)
        sub_targets = None if targets is None else targets[owner]
        fitness = margin_loss(scores.flatten(0, 1), labels[owner], sub_targets).view(len(rows), size)
        fooled = is_adversarial(scores.argmax(2).flatten(), labels[owner], sub_targets).view(len(rows), size)
        return fitness, fooled

    def _keep_fooling(
        self,
        members: torch.Tensor,
        fitness: torch.Tensor,
        fooled: torch.Tensor,
        rows: torch.Tensor,
        inputs: torch.Tensor,
        bounds: tuple[float, float],
        best: torch.Tensor,
    ) -> torch.Tensor:
        """Store, for samples with a fooling candidate, the best such one in ``best``; return the done mask."""
        done = torch.zeros(len(inputs), dtype=torch.bool)
        any_fooled = fooled.any(dim=1)
        if not bool(any_fooled.any()):
            return done
        ranked = torch.where(fooled, fitness, torch.full_like(fitness, float("inf"))).argmin(dim=1)
        winners = any_fooled.nonzero().flatten()
        chosen = members[winners, ranked[winners]][:, None]
        best[rows[winners]] = self._apply(chosen, inputs[rows[winners]], bounds)[:, 0]
        done[rows[winners]] = True
        return done


OnePixel = OnePixelAttack

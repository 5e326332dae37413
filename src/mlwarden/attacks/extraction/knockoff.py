"""Knockoff Nets: train a copy on the victim's answers to queries drawn from a transfer set.

Reference: T. Orekondy, B. Schiele, M. Fritz, "Knockoff Nets: stealing
functionality of black-box models", CVPR 2019.

The attacker draws transfer inputs at random, sends them to the victim, and
trains a copy on the answers: the full probability vectors when the victim
shows them (as Orekondy et al. do), else the labels. The transfer set is
either the attacker's own natural images (``transfer="public"``: unlabelled
images of the same kind, such as another split of the data set) or synthetic
images (``transfer="synthetic"``: smooth random patterns, for an attacker with
no data at all).

Limitations: only the paper's ``random`` sampling strategy, not its
reinforcement-learning ``adaptive`` strategy. Synthetic patterns cover the
input space poorly, so their copies agree with the victim far less than
copies trained on natural images.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..._validation import check_choice, check_int
from ...threat import Frequency, Goal, Knowledge, Specificity, Stage, ThreatProfile
from .base import ExtractionEvaluation, ExtractionResult, ModelExtraction, check_pool, checkpoint_counts


if TYPE_CHECKING:
    from ...models.query import QueryModel

__all__ = ["KnockoffNets", "synthetic_images", "TRANSFER_SETS"]

logger = logging.getLogger(__name__)

TRANSFER_SETS = ("public", "synthetic")


def synthetic_images(
    count: int, shape: Sequence[int], generator: torch.Generator, bounds: tuple[float, float] = (0.0, 1.0)
) -> torch.Tensor:
    """Return ``count`` smooth random images (N, C, H, W) in ``bounds``.

    Each image is random noise on a coarse grid (side 4 to 8 cells), scaled
    up bilinearly, with a random contrast and offset.
    """
    channels, height, width = (int(size) for size in shape)
    images = torch.empty(count, channels, height, width)
    for start in range(0, count, 256):
        size = min(256, count - start)
        cells = int(torch.randint(4, 9, (1,), generator=generator))
        coarse = torch.rand(size, channels, cells, cells, generator=generator)
        smooth = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
        contrast = torch.rand(size, 1, 1, 1, generator=generator) * 1.5 + 0.5
        offset = torch.rand(size, 1, 1, 1, generator=generator) - 0.5
        images[start : start + size] = ((smooth - 0.5) * contrast + 0.5 + offset).clamp(0.0, 1.0)
    low, high = bounds
    return images * (high - low) + low


class KnockoffNets(ModelExtraction):
    """Knockoff Nets with random sampling from a public or synthetic transfer set.

    Parameters
    ----------
    transfer : {"public", "synthetic"}, default "public"
        Where the queries come from: the ``pool`` given to :meth:`extract`,
        or synthetic images of the pool's shape.
    checkpoints : sequence of int, optional
        Query counts at which the copy is trained and scored; default 1/8,
        1/4, 1/2 and all of the budget.
    architecture, epochs, batch_size, learning_rate, query_batch, seed
        See :class:`~mlwarden.attacks.extraction.base.ModelExtraction`.

    Examples
    --------
    >>> from mlwarden.models import load_pretrained
    >>> from mlwarden.models.query import ModuleQueryModel
    >>> from mlwarden.data import load_dataset
    >>> victim = ModuleQueryModel(load_pretrained("lenet5")[0])
    >>> pool = load_dataset("fashion-mnist", "train").images[:200]
    >>> result = KnockoffNets(epochs=2).extract(victim, pool, budget=200)
    >>> result.queries
    200
    """

    name = "knockoff"
    profile = ThreatProfile(
        Goal.CONFIDENTIALITY, Stage.API, Knowledge.SCORE_BASED, Frequency.ITERATIVE, (Specificity.UNTARGETED,)
    )

    def __init__(
        self,
        *,
        transfer: str = "public",
        checkpoints: Sequence[int] | None = None,
        architecture: str = "lenet5",
        epochs: int = 10,
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        query_batch: int = 100,
        seed: int = 0,
    ) -> None:
        super().__init__(
            architecture=architecture,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            query_batch=query_batch,
            seed=seed,
        )
        self.transfer = check_choice(transfer, "transfer", "KnockoffNets", TRANSFER_SETS)
        self.checkpoints = None if checkpoints is None else [check_int(c, "checkpoints", "KnockoffNets", low=1) for c in checkpoints]

    def extract(
        self,
        victim: QueryModel,
        pool: torch.Tensor,
        *,
        budget: int,
        evaluation: ExtractionEvaluation | None = None,
    ) -> ExtractionResult:
        """Query the victim on up to ``budget`` transfer inputs and train a copy at each checkpoint.

        Parameters
        ----------
        victim : QueryModel
        pool : torch.Tensor
            The attacker's images (N, C, H, W). With ``transfer="public"`` the
            queries are drawn from it without replacement, so it needs at
            least ``budget`` images; with ``"synthetic"`` only its shape is used.
        budget : int
            Queries to spend.
        evaluation : ExtractionEvaluation, optional
            Scores each checkpoint's copy.
        """
        owner = "KnockoffNets"
        budget = check_int(budget, "budget", owner, low=1)
        check_pool(pool, owner, budget if self.transfer == "public" else 1)
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(self.seed)
        if self.transfer == "public":
            queries = pool[torch.randperm(len(pool), generator=generator)[:budget]]
        else:
            low, high = victim.bounds
            queries = synthetic_images(budget, pool.shape[1:], generator, (low, high))
        inputs: list[torch.Tensor] = []
        answers: list[torch.Tensor] = []
        checkpoints = []
        answered = 0
        stopped = None
        copy = None
        num_classes = victim.num_classes or 10
        for target in checkpoint_counts(budget, self.checkpoints):
            batch = queries[answered:target]
            reply, stopped = self._ask(victim, batch)
            if reply is not None and len(reply):
                inputs.append(batch[: len(reply)])
                answers.append(reply)
                answered += len(reply)
            num_classes = victim.num_classes or num_classes
            if answered:
                copy = self._fit(torch.cat(inputs), torch.cat(answers), num_classes, salt=answered)
                checkpoints.append(self._checkpoint(copy, answered, evaluation, started))
            if stopped is not None:
                break
        if copy is None:
            copy = self._new_copy(num_classes).eval()
            checkpoints.append(self._checkpoint(copy, 0, evaluation, started))
        return ExtractionResult(self.name, copy, checkpoints, answered, stopped, self.settings())

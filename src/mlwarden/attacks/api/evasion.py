"""Black-box evasion through the service's API, judged by the defender's local copy of the model.

:func:`evade_through_api` runs any query-based evasion attack (Square,
SimBA, HopSkipJump, ...) on a :class:`~mlwarden.serve.ServiceQueryModel`,
so every query is an HTTP request that meets the guards. Output hardening
leaves score-based attacks nothing to climb on a label-only service. The
extraction monitor sees the attack's many nearby queries, which look like
synthetic extraction queries. The detector and the rate limit apply too.
Whether each returned input fools the model is then checked on the local
reference model, not through the API. When the service stops answering,
the attack returns the best inputs it found so far.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ...errors import BudgetExhausted, ModelError
from ..base import EvasionAttack


if TYPE_CHECKING:
    from ...models.query import QueryModel

__all__ = ["EvasionThroughApiResult", "evade_through_api"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvasionThroughApiResult:
    """Outcome of a black-box evasion run through the API.

    Attributes
    ----------
    attack : str
    samples : int
        Inputs attacked (those the model classified correctly).
    success_rate : float or None
        Share of them that the model misclassifies after the attack; None when the attack could not run.
    queries : int
        Queries sent through the API.
    mean_queries : float or None
        Mean queries per attacked sample.
    stopped : str or None
        Why the attack could not run or stopped early.
    seconds : float
    """

    attack: str
    samples: int
    success_rate: float | None
    queries: int
    mean_queries: float | None
    stopped: str | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "samples": self.samples,
            "success_rate": self.success_rate,
            "queries": self.queries,
            "mean_queries": self.mean_queries,
            "stopped": self.stopped,
            "seconds": round(self.seconds, 3),
        }


def evade_through_api(
    victim: QueryModel,
    attack: EvasionAttack,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float | None = None,
) -> EvasionThroughApiResult:
    """Attack ``images`` through ``victim`` and return the success rate on the correctly classified ones.

    ``victim`` should carry a local ``reference`` (see
    :class:`~mlwarden.serve.ServiceQueryModel`), so that the success check
    does not go through the API.
    """
    started = time.perf_counter()
    before = victim.queries
    client = getattr(victim, "client", None)
    if client is not None:
        client.last_refusal = None
    with torch.no_grad():
        correct = victim(images).argmax(dim=1) == labels
    inputs, targets = images[correct], labels[correct]
    if len(inputs) == 0:
        return EvasionThroughApiResult(attack.name, 0, None, 0, None, "no correctly classified input", time.perf_counter() - started)
    stopped = None
    try:
        result = attack(victim, inputs, targets, eps=eps)
    except (BudgetExhausted, ModelError) as error:
        # A refusal outside the attack's own budget handling, or an attack that needs scores from a label-only service.
        logger.warning("%s through the API stopped: %s", attack.name, error.message)
        return EvasionThroughApiResult(
            attack.name, len(inputs), None, victim.queries - before, None, error.message, time.perf_counter() - started
        )
    assert not isinstance(result, list)  # a scalar eps gives one result
    queries = victim.queries - before
    refusal = getattr(getattr(victim, "client", None), "last_refusal", None)
    if refusal is not None:
        stopped = refusal.message
    success = float(result.success.float().mean())
    return EvasionThroughApiResult(
        attack.name,
        len(inputs),
        success,
        queries,
        queries / len(inputs),
        stopped,
        time.perf_counter() - started,
    )

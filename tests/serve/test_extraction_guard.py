"""The extraction monitor against extraction attacks run through the HTTP API."""

from __future__ import annotations

import pytest
import torch

from mlwarden.attacks.extraction import ExtractionEvaluation, JacobianAugmentation
from mlwarden.data import Dataset
from mlwarden.serve import ServiceClient, ServiceConfig, ServiceQueryModel

from .conftest import RunningService


@pytest.fixture
def victim_of(request: pytest.FixtureRequest):
    """Return a function that makes a query model over a running service, closing its client after the test."""
    clients: list[ServiceClient] = []

    def make(running: RunningService) -> ServiceQueryModel:
        client = ServiceClient(running.url, running.key("predict"))
        clients.append(client)
        return ServiceQueryModel(client)

    yield make
    for client in clients:
        client.close()


@pytest.mark.slow
def test_extraction_flagged_before_unguarded_agreement(start_service, victim_of, lenet, fashion_test: Dataset) -> None:
    pool = fashion_test.images[2000:4000]
    evaluation = ExtractionEvaluation(lenet, fashion_test.images[:1000], fashion_test.labels[:1000])
    attack = JacobianAugmentation(seed_size=50, rounds=5, epochs=5)

    unguarded = start_service(ServiceConfig().with_guards({"auth"}))
    free = attack.extract(victim_of(unguarded), pool, budget=800, evaluation=evaluation)
    guarded = start_service(ServiceConfig())
    blocked = attack.extract(victim_of(guarded), pool, budget=800, evaluation=evaluation)

    assert free.stopped is None
    assert free.queries == 800
    alerts = guarded.service.alerts()
    assert len(alerts) == 1
    assert alerts[0]["action"] == "block"
    assert alerts[0]["queries"] < free.queries
    assert blocked.stopped is not None and "403" in blocked.stopped
    # The service responds to the flagging request; the rest of the attacker's chunk of queries is refused and lost.
    assert blocked.queries <= alerts[0]["queries"]
    assert blocked.agreement < free.agreement


def test_benign_client_not_flagged(start_service, victim_of, fashion_test: Dataset) -> None:
    running = start_service(ServiceConfig())
    victim = victim_of(running)
    order = torch.randperm(len(fashion_test), generator=torch.Generator().manual_seed(1))[:600]
    for start in range(0, 600, 50):
        victim.predict_scores(fashion_test.images[order[start : start + 50]])
    # Retries of images kept in the growing sets are repeats, which the monitor skips.
    victim.predict_scores(fashion_test.images[order[:50]])
    assert running.service.alerts() == []
    state = running.service.monitor.snapshot()[0]
    assert state["queries"] == 650
    assert 0 < state["repeats"] <= 50
    assert state["statistic"] is not None and state["statistic"] > running.service.config.monitor.threshold

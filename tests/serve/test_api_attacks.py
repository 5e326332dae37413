"""Attacks on the API itself: key probes, floods and black-box evasion, with and without guards."""

from __future__ import annotations

import json

import pytest
import torch

from mlwarden.attacks.api import check_loopback_url, evade_through_api, flood, probe_keys
from mlwarden.attacks.evasion.square import SquareAttack
from mlwarden.errors import ParameterError
from mlwarden.serve import OutputPolicy, ServiceClient, ServiceConfig, ServiceQueryModel
from mlwarden.serve.drills import guard_configurations


def test_key_probe_gets_nothing_from_guarded_service(start_service) -> None:
    running = start_service(ServiceConfig(auth_failure_burst=1000))
    known = running.key("predict").split("_")[1]
    result = probe_keys(running.url, attempts=30, known_key_id=known)
    assert result.attempts == 30
    assert result.accepted == 0
    assert len(result.bodies_401) == 1
    assert set(result.statuses) == {"no-header", "no-token", "malformed", "random-key", "known-id"}


def test_key_probe_without_auth_gets_in(start_service) -> None:
    running = start_service(ServiceConfig().with_guards(set()))
    result = probe_keys(running.url, attempts=10)
    assert result.accepted == 10


def test_flood_limited_bystander_unaffected(start_service, small_batch: tuple) -> None:
    images, _ = small_batch
    running = start_service(ServiceConfig())
    attacker = running.key("predict", rate=5, burst=10)
    bystander = running.key("predict", rate=1000, burst=1000)
    body = json.dumps({"inputs": images[:1].tolist()}).encode()
    result = flood(running.url, attacker, body, requests=150, concurrency=8, max_seconds=20, bystander_token=bystander, bystander_requests=20)
    assert result.flood.requests == 150
    assert result.flood.rate_limited >= 100
    assert result.flood.accepted <= 10 + 5 * result.flood.seconds + 1
    assert result.bystander is not None
    assert result.bystander.accepted == 20


def test_flood_refuses_non_loopback_target() -> None:
    with pytest.raises(ParameterError, match="loopback"):
        check_loopback_url("http://10.0.0.1:8000", "flood")
    with pytest.raises(ParameterError, match="loopback"):
        flood("http://example.org", None, b"{}", requests=1)
    assert check_loopback_url("http://127.0.0.1:9", "flood") == "http://127.0.0.1:9"


def test_evasion_through_api_succeeds_on_scores(start_service, lenet, fashion_test) -> None:
    running = start_service(ServiceConfig().with_guards({"auth"}))
    with ServiceClient(running.url, running.key("predict")) as client:
        victim = ServiceQueryModel(client, reference=lenet)
        result = evade_through_api(
            victim, SquareAttack(max_queries=60), fashion_test.images[1000:1008], fashion_test.labels[1000:1008], eps=0.15
        )
    assert result.samples > 0
    assert result.success_rate is not None and result.success_rate > 0
    assert result.queries > result.samples
    assert result.stopped is None


def test_label_only_output_stops_score_based_evasion(start_service, lenet, fashion_test) -> None:
    running = start_service(ServiceConfig(output=OutputPolicy(mode="label")).with_guards({"auth", "hardening"}))
    with ServiceClient(running.url, running.key("predict")) as client:
        victim = ServiceQueryModel(client, reference=lenet)
        assert victim.decision_based
        result = evade_through_api(
            victim, SquareAttack(max_queries=20), fashion_test.images[1000:1004], fashion_test.labels[1000:1004], eps=0.15
        )
    assert result.success_rate is None
    assert result.stopped is not None and "labels only" in result.stopped


def test_evasion_verification_uses_local_reference(start_service, lenet, fashion_test) -> None:
    running = start_service(ServiceConfig().with_guards({"auth"}))
    with ServiceClient(running.url, running.key("predict")) as client:
        victim = ServiceQueryModel(client, reference=lenet)
        before = client.requests
        log_probabilities = victim(fashion_test.images[:16])
    assert client.requests == before
    assert torch.equal(log_probabilities.argmax(1), lenet(fashion_test.images[:16]).argmax(1))


def test_drill_configurations_leave_each_guard_out() -> None:
    labels = [label for label, _ in guard_configurations("extraction", ServiceConfig())]
    assert labels == ["none", "all", "all but auth", "all but rate-limit", "all but monitor", "all but hardening"]
    configurations = dict(guard_configurations("evasion", ServiceConfig(), with_detector=True))
    assert "detector" not in configurations["all but detector"].guards
    assert "detector" in configurations["all"].guards
    assert configurations["none"].guards == frozenset()

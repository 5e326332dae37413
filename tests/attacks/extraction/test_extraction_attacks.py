"""Knockoff Nets and Jacobian-based augmentation against a local victim."""

from __future__ import annotations

import pytest
import torch

from mlwarden.attacks.extraction import ExtractionEvaluation, JacobianAugmentation, KnockoffNets, synthetic_images
from mlwarden.data import Dataset
from mlwarden.errors import ModelError, ParameterError
from mlwarden.models.query import ModuleQueryModel


@pytest.fixture(scope="module")
def attacker_pool(fashion_test: Dataset) -> torch.Tensor:
    """Unlabelled images the attacker owns, disjoint from the 1,000 images that score the copies."""
    return fashion_test.images[2000:4000]


@pytest.fixture(scope="module")
def evaluation(lenet: torch.nn.Module, fashion_test: Dataset) -> ExtractionEvaluation:
    return ExtractionEvaluation(lenet, fashion_test.images[:1000], fashion_test.labels[:1000])


def test_knockoff_agreement_grows_with_queries(lenet, attacker_pool, evaluation) -> None:
    victim = ModuleQueryModel(lenet)
    result = KnockoffNets(epochs=5, checkpoints=[50, 600]).extract(victim, attacker_pool, budget=600, evaluation=evaluation)
    assert result.queries == 600
    assert victim.queries == 600
    assert result.stopped is None
    assert [checkpoint.queries for checkpoint in result.checkpoints] == [50, 600]
    first, last = result.checkpoints
    assert last.agreement > first.agreement + 0.1
    assert last.agreement > 0.5
    assert last.accuracy is not None and last.accuracy > 0.4


def test_knockoff_labels_only_victim(lenet, attacker_pool, evaluation) -> None:
    victim = ModuleQueryModel(lenet, labels_only=True)
    result = KnockoffNets(epochs=5, checkpoints=[300]).extract(victim, attacker_pool, budget=300, evaluation=evaluation)
    assert result.queries == 300
    assert result.agreement > 0.4


def test_knockoff_is_deterministic(lenet, attacker_pool, evaluation) -> None:
    runs = [
        KnockoffNets(epochs=2, checkpoints=[200], seed=3).extract(ModuleQueryModel(lenet), attacker_pool, budget=200, evaluation=evaluation)
        for _ in range(2)
    ]
    assert runs[0].agreement == runs[1].agreement
    for left, right in zip(runs[0].copy.parameters(), runs[1].copy.parameters()):
        assert torch.equal(left, right)


def test_budget_exhaustion_stops_and_keeps_answers(lenet, attacker_pool, evaluation) -> None:
    victim = ModuleQueryModel(lenet, budget=250)
    result = KnockoffNets(epochs=2, checkpoints=[200, 500], query_batch=50).extract(
        victim, attacker_pool, budget=500, evaluation=evaluation
    )
    assert result.queries == 250
    assert result.stopped is not None and "budget" in result.stopped
    assert result.checkpoints[-1].queries == 250


def test_synthetic_transfer_stays_in_bounds() -> None:
    images = synthetic_images(300, (1, 28, 28), torch.Generator().manual_seed(0))
    assert images.shape == (300, 1, 28, 28)
    assert float(images.min()) >= 0.0
    assert float(images.max()) <= 1.0
    assert float(images.std()) > 0.1


def test_jacobian_augmentation_grows_set(lenet, attacker_pool, evaluation) -> None:
    victim = ModuleQueryModel(lenet, labels_only=True)
    attack = JacobianAugmentation(seed_size=40, rounds=4, epochs=5)
    result = attack.extract(victim, attacker_pool, budget=300, evaluation=evaluation)
    assert [checkpoint.queries for checkpoint in result.checkpoints] == [40, 80, 160, 300]
    assert result.queries == 300
    assert victim.queries == 300
    assert result.agreement > result.checkpoints[0].agreement


def test_jacobian_points_stay_in_bounds_and_step(lenet, attacker_pool) -> None:
    attack = JacobianAugmentation(seed_size=10, step_size=0.1)
    inputs = attacker_pool[:10]
    labels = lenet(inputs).argmax(1)
    new = attack._augment(lenet, inputs, labels, 0.1, (0.0, 1.0), torch.Generator().manual_seed(0))
    assert float(new.min()) >= 0.0
    assert float(new.max()) <= 1.0
    assert float((new - inputs).abs().max()) <= 0.1 + 1e-6
    assert float((new - inputs).abs().max()) > 0.0


@pytest.mark.parametrize(
    ("factory", "error", "match"),
    [
        (lambda: KnockoffNets(transfer="web"), ParameterError, "transfer"),
        (lambda: KnockoffNets(epochs=0), ParameterError, "epochs"),
        (lambda: JacobianAugmentation(step_size=-1.0), ParameterError, "step_size"),
        (lambda: JacobianAugmentation(architecture="vgg99"), ModelError, "vgg99"),
    ],
    ids=["transfer", "epochs", "step-size", "architecture"],
)
def test_invalid_settings_raise(factory, error, match) -> None:
    with pytest.raises(error, match=match):
        factory()


def test_public_pool_smaller_than_budget_raises(lenet) -> None:
    with pytest.raises(ParameterError, match="at least 500"):
        KnockoffNets().extract(ModuleQueryModel(lenet), torch.rand(10, 1, 28, 28), budget=500)

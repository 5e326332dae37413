"""HopSkipJump reads labels only and returns only points a query showed to be adversarial."""

from __future__ import annotations

import pytest
import torch

from mlwarden.attacks.evasion import HSJA
from mlwarden.models import ModuleQueryModel


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_hsja_never_reads_scores(norm, lenet, correct_batch, labels_only):
    images, labels = correct_batch
    api = labels_only(lenet)
    result = HSJA(norm=norm, max_queries=300)(api, images, labels)
    assert result.success_rate > 0.9
    assert api.queries == int(result.queries_per_sample.sum())


@pytest.mark.parametrize(("norm", "eps"), [("l2", 0.5), ("linf", 0.04), ("l2", None)])
def test_hsja_returns_adversarial_or_input(norm, eps, lenet, correct_batch):
    images, labels = correct_batch
    # A small budget leaves many samples short of eps: they must come back unchanged, not as the last candidate.
    result = HSJA(norm=norm, max_queries=150)(lenet, images, labels, eps=eps)
    with torch.no_grad():
        fresh = lenet(result.adversarial).argmax(1)
    changed = (result.adversarial != images).flatten(1).any(dim=1)
    assert bool((fresh[changed] != labels[changed]).all())
    assert torch.equal(result.success, fresh != labels)
    if eps is not None:
        assert bool((~result.success).any()), "the budget should leave some samples unsolved"
        assert not bool(changed[~result.success].any())


def test_hsja_distance_shrinks_with_queries(lenet, correct_batch):
    images, labels = correct_batch
    short = HSJA(max_queries=100)(lenet, images, labels)
    long = HSJA(max_queries=600)(lenet, images, labels)
    assert float(long.l2.median()) < 0.8 * float(short.l2.median())


def test_hsja_norm_option_changes_geometry(lenet, correct_batch):
    images, labels = correct_batch
    euclidean = HSJA(norm="l2", max_queries=400)(lenet, images, labels)
    chebyshev = HSJA(norm="linf", max_queries=400)(lenet, images, labels)
    assert chebyshev.linf.median() < euclidean.linf.median()
    assert euclidean.l2.median() < chebyshev.l2.median()


def test_hsja_targeted_from_starting_points(lenet, correct_batch, fashion_train, labels_only):
    images, labels = correct_batch
    api = labels_only(lenet)
    attack = HSJA(max_queries=300, init_trials=0)
    kept = attack.fit_starting_points(api, fashion_train.images[:300])
    assert len(kept) == 10
    assert api.queries == 300
    targets = (labels + 1) % 10
    result = attack(api, images, labels, targets)
    assert result.success_rate == 1.0
    assert torch.equal(result.predictions, targets)


def test_hsja_spends_model_budget_cleanly(lenet, correct_batch):
    images, labels = correct_batch
    api = ModuleQueryModel(lenet, labels_only=True, budget=400)
    result = HSJA(max_queries=1000)(api, images, labels)
    assert api.queries <= 400
    assert int(result.queries_per_sample.sum()) == api.queries

"""Invariants every query-based attack keeps: budgets, bounds, eps, seeds, clean stops."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from mlwarden.attacks import EvasionAttack
from mlwarden.attacks.evasion import HSJA, OnePixelAttack, SimBA, SquareAttack
from mlwarden.models import ModuleQueryModel

# (id, factory, eps, max_queries): small budgets so that the table runs in seconds.
CASES: list[tuple[str, Callable[[], EvasionAttack], float | None, int]] = [
    ("square-linf", lambda: SquareAttack(norm="linf", max_queries=150), 0.1, 150),
    ("square-l2", lambda: SquareAttack(norm="l2", max_queries=150), 1.5, 150),
    ("simba-dct", lambda: SimBA(basis="dct", max_queries=150), None, 150),
    ("simba-pixel-eps", lambda: SimBA(basis="pixel", max_queries=150), 1.0, 150),
    ("hsja-l2", lambda: HSJA(norm="l2", max_queries=200), None, 200),
    ("hsja-linf-eps", lambda: HSJA(norm="linf", max_queries=200), 0.2, 200),
    ("onepixel", lambda: OnePixelAttack(pixels=3, population=20, max_queries=100), None, 100),
]
IDS = [case[0] for case in CASES]


def _norms(result) -> dict[str, torch.Tensor]:
    return {"linf": result.linf, "l2": result.l2, "l0": result.l0}


@pytest.mark.parametrize(("name", "factory", "eps", "max_queries"), CASES, ids=IDS)
def test_queries_counted_and_capped(name, factory, eps, max_queries, lenet, correct_batch, recording):
    images, labels = correct_batch
    spy = recording(lenet)
    api = ModuleQueryModel(spy)
    result = factory()(api, images, labels, eps=eps)
    assert result.queries_per_sample is not None
    assert int(result.queries_per_sample.max()) <= max_queries
    assert int(result.queries_per_sample.min()) >= 1
    # Every query the attack made went through the query model and is attributed to one sample.
    assert api.queries == int(result.queries_per_sample.sum())
    assert spy.rows == api.queries + api.evaluations


@pytest.mark.parametrize(("name", "factory", "eps", "max_queries"), CASES, ids=IDS)
def test_queries_and_results_stay_in_bounds(name, factory, eps, max_queries, lenet, correct_batch, recording):
    images, labels = correct_batch
    low, high = 0.2, 0.7
    # Squeezed images touch both bounds, so clipping the perturbation instead of the input would leave them.
    squeezed = low + (high - low) * images
    spy = recording(lenet)
    result = factory()(ModuleQueryModel(spy), squeezed, labels, eps=eps, bounds=(low, high))
    assert spy.lowest >= low - 1e-6
    assert spy.highest <= high + 1e-6
    assert float(result.adversarial.min()) >= low - 1e-6
    assert float(result.adversarial.max()) <= high + 1e-6


@pytest.mark.parametrize(("name", "factory", "eps", "max_queries"), [c for c in CASES if c[2] is not None], ids=[c[0] for c in CASES if c[2] is not None])
def test_results_within_eps(name, factory, eps, max_queries, lenet, correct_batch):
    images, labels = correct_batch
    attack = factory()
    result = attack(lenet, images, labels, eps=eps)
    assert float(_norms(result)[attack.norm].max()) <= eps * (1 + 1e-5)


@pytest.mark.parametrize(("name", "factory", "eps", "max_queries"), CASES, ids=IDS)
def test_model_budget_stops_attack_cleanly(name, factory, eps, max_queries, lenet, correct_batch):
    images, labels = correct_batch
    api = ModuleQueryModel(lenet, budget=50)
    result = factory()(api, images, labels, eps=eps)
    assert api.queries <= 50
    assert int(result.queries_per_sample.sum()) == api.queries
    with torch.no_grad():
        fresh = lenet(result.adversarial).argmax(1)
    assert torch.equal(result.success, fresh != labels)


@pytest.mark.parametrize(("name", "factory", "eps", "max_queries"), CASES, ids=IDS)
def test_sample_result_ignores_batch(name, factory, eps, max_queries, lenet, correct_batch):
    images, labels = correct_batch
    whole = factory()(lenet, images, labels, eps=eps)
    part = factory()(lenet, images[4:8], labels[4:8], eps=eps, indices=torch.arange(4, 8))
    torch.testing.assert_close(part.adversarial, whole.adversarial[4:8])
    assert torch.equal(part.queries_per_sample, whole.queries_per_sample[4:8])


def test_seed_changes_search(lenet, correct_batch):
    images, labels = correct_batch
    first = SquareAttack(max_queries=50, seed=1)(lenet, images, labels, eps=0.05)
    again = SquareAttack(max_queries=50, seed=1)(lenet, images, labels, eps=0.05)
    other = SquareAttack(max_queries=50, seed=2)(lenet, images, labels, eps=0.05)
    assert torch.equal(first.adversarial, again.adversarial)
    assert not torch.equal(first.adversarial, other.adversarial)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: SquareAttack(norm="l1"), "norm must be one of 'linf', 'l2'"),
        (lambda: SquareAttack(max_queries=0), "max_queries must be an integer >= 1"),
        (lambda: SquareAttack(p_init=1.5), "p_init must be a number in"),
        (lambda: SimBA(basis="wavelet"), "basis must be one of 'pixel', 'dct'"),
        (lambda: SimBA(step_size=0), "step_size must be a number > 0"),
        (lambda: HSJA(norm="l0"), "norm must be one of 'l2', 'linf'"),
        (lambda: HSJA(init_evals=200, max_evals=100), "max_evals must be >= init_evals"),
        (lambda: OnePixelAttack(population=3), "population must be an integer >= 4"),
        (lambda: OnePixelAttack(population=50, max_queries=20), "max_queries must be at least population"),
        (lambda: OnePixelAttack(values="mean"), "values must be one of 'search', 'extreme'"),
        (lambda: OnePixelAttack(crossover=0), "crossover must be a number in"),
    ],
)
def test_invalid_settings_rejected(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()

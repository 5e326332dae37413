"""PGD under L-inf and L2: budgets, random starts seeded per sample, restarts, targeted runs."""

from __future__ import annotations

import pytest
import torch

from mlwarden.attacks.evasion import L2PGD, PGD
from mlwarden.attacks.evasion.pgd import random_start_noise, restart_keys
from mlwarden.errors import ParameterError


@pytest.mark.parametrize(("attack", "eps"), [(PGD(steps=10), 0.05), (L2PGD(steps=10), 1.0)], ids=["linf", "l2"])
def test_output_within_budget_and_bounds(attack, eps, lenet, small_batch):
    inputs, labels = small_batch
    result = attack(lenet, inputs, labels, eps=eps)
    norms = result.linf if attack.norm == "linf" else result.l2
    assert float(norms.max()) <= eps + 1e-5
    assert float(result.adversarial.min()) >= 0.0
    assert float(result.adversarial.max()) <= 1.0
    assert result.success_rate > 0.5


def test_l2_steps_are_not_sign_steps(lenet, small_batch):
    # A sign step changes every pixel by the same amount; a normalized gradient step does not.
    inputs, labels = small_batch
    result = L2PGD(steps=1, random_start=False, step_size=0.5)(lenet, inputs[:8], labels[:8], eps=0.5)
    changed = (result.adversarial - inputs[:8]).abs().flatten(1)
    moved = changed[changed.sum(1) > 0]
    assert len(moved) > 0
    assert bool((moved.amax(1) > 2 * moved.median(1).values).all())


def test_random_start_noise_independent_of_batch():
    keys = torch.arange(10, 20)
    whole = random_start_noise(keys, torch.Size([1, 4, 4]), "linf", seed=3)
    part = random_start_noise(keys[4:7], torch.Size([1, 4, 4]), "linf", seed=3)
    assert torch.equal(whole[4:7], part)
    assert float(whole.abs().max()) <= 1.0


def test_random_start_noise_depends_on_seed_and_restart():
    keys = torch.arange(5)
    base = random_start_noise(keys, torch.Size([8]), "linf", seed=0)
    assert not torch.equal(base, random_start_noise(keys, torch.Size([8]), "linf", seed=1))
    assert not torch.equal(base, random_start_noise(restart_keys(keys, 1), torch.Size([8]), "linf", seed=0))
    assert torch.equal(base, random_start_noise(restart_keys(keys, 0), torch.Size([8]), "linf", seed=0))


def test_l2_random_start_radius_spread_in_unit_ball():
    noise = random_start_noise(torch.arange(200), torch.Size([784]), "l2", seed=0)
    norms = noise.norm(dim=1)
    assert float(norms.max()) <= 1.0 + 1e-5
    assert float(norms.min()) < 0.1
    assert 0.4 < float(norms.mean()) < 0.6


@pytest.mark.parametrize("attack", [PGD(steps=5, restarts=2), L2PGD(steps=5)], ids=["linf", "l2"])
def test_result_independent_of_batching(attack, lenet, small_batch):
    inputs, labels = small_batch[0][:32], small_batch[1][:32]
    eps = 0.03 if attack.norm == "linf" else 0.5
    whole = attack(lenet, inputs, labels, eps=eps)
    parts = [attack(lenet, inputs[s : s + 8], labels[s : s + 8], eps=eps, indices=torch.arange(s, s + 8)) for s in range(0, 32, 8)]
    assert torch.equal(torch.cat([p.success for p in parts]), whole.success)
    # Batch size changes the float rounding of the model, not the random starts.
    assert torch.allclose(torch.cat([p.adversarial for p in parts]), whole.adversarial, atol=1e-2)


def test_same_seed_same_result(lenet, small_batch):
    inputs, labels = small_batch
    first = PGD(steps=5, seed=7)(lenet, inputs, labels, eps=0.03)
    second = PGD(steps=5, seed=7)(lenet, inputs, labels, eps=0.03)
    other = PGD(steps=5, seed=8)(lenet, inputs, labels, eps=0.03)
    assert torch.equal(first.adversarial, second.adversarial)
    assert not torch.equal(first.adversarial, other.adversarial)


def test_restarts_keep_every_success_of_one_run(lenet, small_batch):
    # Restart 0 is the single run, so more restarts can only add adversarial samples.
    inputs, labels = small_batch
    single = PGD(steps=5, restarts=1)(lenet, inputs, labels, eps=0.02)
    several = PGD(steps=5, restarts=4)(lenet, inputs, labels, eps=0.02)
    assert bool((several.success | ~single.success).all())
    assert int(several.success.sum()) >= int(single.success.sum())
    assert several.cost.gradients > single.cost.gradients


def test_restarts_need_random_start():
    with pytest.raises(ParameterError, match="random_start"):
        PGD(restarts=3, random_start=False)


@pytest.mark.parametrize("bad", [{"steps": 0}, {"restarts": 0}, {"seed": -1}, {"step_size": 0.0}, {"random_start": 1}])
def test_invalid_settings_rejected(bad):
    with pytest.raises(ParameterError):
        PGD(**bad)


def test_zero_budget_returns_inputs(lenet, small_batch):
    inputs, labels = small_batch
    result = PGD(steps=3)(lenet, inputs, labels, eps=0.0)
    assert torch.equal(result.adversarial, inputs)


def test_eps_sweep_accuracy_falls(lenet, small_batch):
    inputs, labels = small_batch
    results = PGD(steps=10)(lenet, inputs, labels, eps=[0.005, 0.03, 0.1])
    accuracies = [r.accuracy for r in results]
    assert accuracies[0] > accuracies[1] > accuracies[2]
    assert [r.eps for r in results] == [0.005, 0.03, 0.1]


@pytest.mark.parametrize("attack", [PGD(steps=20), L2PGD(steps=20)], ids=["linf", "l2"])
def test_targeted_reaches_least_likely_class(attack, lenet, small_batch):
    inputs, labels = small_batch
    with torch.no_grad():
        targets = lenet(inputs).argmin(1)
    eps = 0.15 if attack.norm == "linf" else 3.0
    result = attack(lenet, inputs, labels, targets, eps=eps)
    with torch.no_grad():
        fresh = lenet(result.adversarial).argmax(1)
    assert torch.equal(result.success, fresh == targets)
    assert result.success_rate > 0.8

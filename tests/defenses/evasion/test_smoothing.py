"""Randomized smoothing: confidence bounds, abstention, and certificates that hold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from mlwarden.attacks.evasion.pgd import L2ProjectedGradientDescent
from mlwarden.defenses.evasion import (
    ABSTAIN,
    RandomizedSmoothing,
    certified_accuracy,
    clopper_pearson_lower,
    clopper_pearson_upper,
)
from mlwarden.defenses.evasion.adaptive import SoftSmoothingView
from mlwarden.errors import ParameterError


class _HalfSpace(torch.nn.Module):
    """Class 1 where the first pixel exceeds 0.5, else class 0: its smoothed radius is known exactly."""

    bounds = (0.0, 1.0)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        margin = inputs[:, 0, 0, 0] - 0.5
        return torch.stack([-margin, margin], dim=1) * 100


@pytest.mark.parametrize("successes, trials", [(0, 10), (3, 10), (97, 100), (100, 100), (512, 1000)])
def test_clopper_pearson_matches_scipy(successes, trials):
    alpha = 0.01
    interval = binomtest(successes, trials).proportion_ci(confidence_level=1 - 2 * alpha, method="exact")
    assert float(clopper_pearson_lower(successes, trials, alpha)) == pytest.approx(interval.low, abs=1e-9)
    assert float(clopper_pearson_upper(successes, trials, alpha)) == pytest.approx(interval.high, abs=1e-9)


def test_certified_radius_of_half_space_is_below_the_true_distance():
    distances = torch.tensor([0.05, 0.15, 0.3, 0.45])
    inputs = torch.zeros(4, 1, 2, 2)
    inputs[:, 0, 0, 0] = 0.5 + distances
    smoothing = RandomizedSmoothing(_HalfSpace(), sigma=0.25, seed=0)
    predictions, radii = smoothing.certify(inputs, n0=50, n=4000, alpha=0.001)
    # The smoothed half-space classifier is the half-space itself, so the true radius is the distance.
    assert torch.equal(predictions[radii > 0], torch.ones(int((radii > 0).sum()), dtype=torch.int64))
    assert bool((radii <= distances.double() + 1e-9).all())
    assert bool((radii[1:] >= 0.75 * distances[1:].double()).all())


def test_predict_abstains_on_the_boundary():
    inputs = torch.zeros(3, 1, 2, 2)
    inputs[:, 0, 0, 0] = torch.tensor([0.5, 0.9, 0.1])
    predictions = RandomizedSmoothing(_HalfSpace(), sigma=0.25, seed=1).predict(inputs, n=400, alpha=0.001)
    assert predictions.tolist() == [ABSTAIN, 1, 0]


def test_smoothing_is_seeded(lenet, small_batch):
    images, _ = small_batch
    first = RandomizedSmoothing(lenet, sigma=0.25, seed=5).certify(images[:8], n0=20, n=100)
    second = RandomizedSmoothing(lenet, sigma=0.25, seed=5).certify(images[:8], n0=20, n=100)
    assert torch.equal(first[0], second[0])
    assert torch.equal(first[1], second[1])


def test_smoothing_vote_has_no_gradient_but_soft_view_does(lenet, small_batch):
    images, labels = small_batch
    smoothing = RandomizedSmoothing(lenet, sigma=0.25, samples=8)
    inputs = images[:4].clone().requires_grad_(True)
    vote = torch.autograd.grad(torch.nn.functional.cross_entropy(smoothing(inputs), labels[:4]), inputs)[0]
    soft = torch.autograd.grad(torch.nn.functional.cross_entropy(SoftSmoothingView(smoothing, 8)(inputs), labels[:4]), inputs)[0]
    assert float(vote.abs().max()) == 0.0
    assert float(soft.abs().max()) > 0.0


def test_certified_accuracy_counts_radius_and_label():
    predictions = torch.tensor([0, 1, 2, ABSTAIN])
    radii = torch.tensor([0.3, 0.6, 1.2, 0.0], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 3])
    assert certified_accuracy(predictions, radii, labels, [0.25, 0.5, 1.0]) == {0.25: 0.5, 0.5: 0.25, 1.0: 0.0}


def test_smoothing_rejects_invalid_sigma(lenet):
    with pytest.raises(ParameterError, match="sigma must be a number > 0"):
        RandomizedSmoothing(lenet, sigma=0.0)


@pytest.mark.slow
def test_certified_radii_hold_against_l2_attack(lenet, fashion_test):
    """Spot check: no L2 attack below a sample's certified radius changes its smoothed prediction."""
    smoothing = RandomizedSmoothing(lenet, sigma=0.25, seed=0)
    images, labels = fashion_test.images[:16], fashion_test.labels[:16]
    predictions, radii = smoothing.certify(images, n0=32, n=500, alpha=0.001)
    chosen = ((predictions == labels) & (radii > 0.1)).nonzero().flatten()[:6]
    assert len(chosen) >= 4

    view = SoftSmoothingView(smoothing, samples=32)
    attack = L2ProjectedGradientDescent(steps=20, early_stop=False, seed=0)
    for index in chosen.tolist():
        budget = 0.95 * float(radii[index])
        result = attack(view, images[index : index + 1], labels[index : index + 1], eps=budget)
        assert float(result.l2[0]) <= budget + 1e-5
        after = smoothing.predict(result.adversarial, n=500, alpha=0.001)
        assert int(after[0]) in (int(predictions[index]), ABSTAIN), f"sample {index}, radius {float(radii[index]):.3f}"

    # The same attack with a budget well beyond the radius flips some of them, so the check can fail.
    flipped = 0
    for index in chosen.tolist():
        result = attack(view, images[index : index + 1], labels[index : index + 1], eps=2.5 * float(radii[index]) + 0.5)
        flipped += int(smoothing.predict(result.adversarial, n=200, alpha=0.001)[0]) not in (int(predictions[index]), ABSTAIN)
    assert flipped >= 1


def test_clopper_pearson_bounds_are_ordered():
    successes = np.arange(0, 101, 10)
    lower = clopper_pearson_lower(successes, 100, 0.05)
    upper = clopper_pearson_upper(successes, 100, 0.05)
    assert bool(np.all(lower <= successes / 100))
    assert bool(np.all(upper >= successes / 100))

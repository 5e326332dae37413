"""Faults that peer tools have shipped, each pinned by a test.

- outputs out of bounds after clipping the wrong quantity (the perturbation instead of the input);
- a norm option (L-inf) silently running another norm;
- input normalization applied twice, or shadowed by the attack's own;
- a decision-based attack returning its last candidate (see test_decision_based.py).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlwarden.attacks.evasion import HSJA, AdversarialPatch, OnePixelAttack, SimBA, SquareAttack, UniversalPerturbation
from mlwarden.models import ModuleQueryModel


class _Opaque(nn.Module):
    """The same function as the wrapped model, with none of its attributes (no normalize layer, no bounds)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self._call = [model]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self._call[0](inputs)


# --- clipping the wrong quantity ----------------------------------------------------------------


def test_fitted_attacks_clip_inputs_not_perturbation(lenet, correct_batch, fashion_train, recording):
    images, labels = correct_batch
    low, high = 0.2, 0.7
    squeezed = low + (high - low) * images
    train = fashion_train.subset(200)
    train.images = low + (high - low) * train.images
    train.bounds = (low, high)

    universal = UniversalPerturbation(fit_samples=200, epochs=1)
    spy = recording(lenet)
    universal.fit(spy, train, eps=0.3)
    result = universal(spy, squeezed, labels, eps=0.3, bounds=(low, high))
    patch = AdversarialPatch(size=10, fit_samples=200, epochs=1)
    patch.fit(spy, train, target=8)
    patched = patch(spy, squeezed, labels, torch.full_like(labels, 8), bounds=(low, high))
    assert spy.lowest >= low - 1e-6
    assert spy.highest <= high + 1e-6
    for output in (result.adversarial, patched.adversarial, patch.patch(8)):
        assert float(output.min()) >= low - 1e-6
        assert float(output.max()) <= high + 1e-6


def test_square_linf_window_at_bounds_is_clipped(lenet, correct_batch):
    images, labels = correct_batch
    # Fashion-MNIST backgrounds are exactly 0: a perturbation of -eps there must be clipped to 0.
    assert float((images == 0).float().mean()) > 0.3
    result = SquareAttack(max_queries=30)(lenet, images, labels, eps=0.1)
    assert float(result.adversarial.min()) >= 0.0
    background = images == 0
    assert float(result.adversarial[background].max()) <= 0.1 + 1e-6


# --- a norm option running another norm --------------------------------------------------------


def test_square_linf_option_runs_linf(lenet, correct_batch):
    images, labels = correct_batch
    attack = SquareAttack(norm="linf", max_queries=100)
    result = attack(lenet, images, labels, eps=0.05)
    assert attack.norm == "linf"
    delta = (result.adversarial - result.inputs)[result.attacked]
    moved = delta.abs() > 1e-6
    # An L-inf Square perturbation is +-eps wherever clipping left it whole.
    unclipped = moved & (result.adversarial > 1e-6) & (result.adversarial < 1 - 1e-6)
    torch.testing.assert_close(delta[unclipped].abs(), torch.full_like(delta[unclipped], 0.05))


def test_square_l2_option_runs_l2(lenet, correct_batch):
    images, labels = correct_batch
    attack = SquareAttack(norm="l2", max_queries=100)
    result = attack(lenet, images, labels, eps=1.0)
    assert attack.norm == "l2"
    assert float(result.l2.max()) <= 1.0 + 1e-5
    # An L2 perturbation of norm 1 concentrates mass: some pixels move far more than 1 / sqrt(784).
    assert float(result.linf[result.attacked].min()) > 0.1


def test_universal_norm_option(lenet, correct_batch, fashion_train):
    images, labels = correct_batch
    for norm, eps in (("linf", 0.1), ("l2", 2.0)):
        attack = UniversalPerturbation(norm=norm, fit_samples=200, epochs=1)
        attack.fit(lenet, fashion_train, eps=eps)
        perturbation = attack.perturbation(eps)
        if norm == "linf":
            assert float(perturbation.abs().max()) <= eps + 1e-6
            assert float(perturbation.norm()) > eps
        else:
            assert float(perturbation.norm()) <= eps + 1e-5
            assert float(perturbation.abs().max()) < eps


# --- normalization applied twice or shadowed ---------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "eps"),
    [
        (lambda: SquareAttack(max_queries=60), 0.1),
        (lambda: SimBA(max_queries=60), None),
        (lambda: HSJA(max_queries=120), None),
        (lambda: OnePixelAttack(pixels=3, population=10, max_queries=40), None),
    ],
    ids=["square", "simba", "hsja", "onepixel"],
)
def test_attacks_ignore_model_normalization(factory, eps, lenet, correct_batch, recording):
    images, labels = correct_batch
    spy = recording(lenet)
    plain = factory()(ModuleQueryModel(spy), images, labels, eps=eps)
    # Pixel space only: a second normalization would send values outside [0, 1] (to -0.81..2.02 for LeNet).
    assert spy.lowest >= 0.0
    assert spy.highest <= 1.0
    # The same function without any normalize attribute gives the same result: nothing is read from the model.
    hidden = factory()(_Opaque(lenet), images, labels, eps=eps, bounds=(0.0, 1.0))
    torch.testing.assert_close(hidden.adversarial, plain.adversarial)

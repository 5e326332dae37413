"""Carlini-Wagner L2: success, binary search, early abort, kappa and targeted runs."""

from __future__ import annotations

import pytest
import torch

from mlwarden.attacks.evasion import CW
from mlwarden.attacks.evasion.carlini_wagner import logit_margin
from mlwarden.errors import ParameterError


@pytest.fixture(scope="module")
def batch(small_batch):
    return small_batch[0][:32], small_batch[1][:32]


def test_logit_margin_signs():
    logits = torch.tensor([[2.0, 5.0, 1.0]])
    assert float(logit_margin(logits, torch.tensor([0]), None)) == pytest.approx(2 - 5)
    assert float(logit_margin(logits, torch.tensor([0]), torch.tensor([2]))) == pytest.approx(5 - 1)


def test_untargeted_finds_small_perturbations(lenet, batch):
    inputs, labels = batch
    result = CW(steps=50, binary_search_steps=4, initial_const=0.1)(lenet, inputs, labels)
    fooled = result.success & result.attacked
    assert result.success_rate > 0.85
    assert float(result.adversarial.min()) >= 0.0
    assert float(result.adversarial.max()) <= 1.0
    assert bool(result.adversarial.isfinite().all())
    # The default L2 budget of pgd-l2 is 1.5; a minimal-perturbation attack should need far less.
    assert float(result.l2[fooled].median()) < 1.0


def test_failed_samples_returned_unchanged(lenet, batch):
    inputs, labels = batch
    result = CW(steps=5, binary_search_steps=1, initial_const=1e-3)(lenet, inputs, labels)
    failed = ~result.success
    assert int(failed.sum()) > 0
    assert torch.equal(result.adversarial[failed], inputs[failed])


def test_more_search_steps_only_improve(lenet, batch):
    # The first run is the same in both calls, so extra search steps can only add successes
    # and shrink the kept perturbations.
    inputs, labels = batch
    short = CW(steps=30, binary_search_steps=1, initial_const=0.1)(lenet, inputs, labels)
    long = CW(steps=30, binary_search_steps=3, initial_const=0.1)(lenet, inputs, labels)
    assert bool((long.success | ~short.success).all())
    assert bool((long.l2[short.success] <= short.l2[short.success] + 1e-5).all())
    assert int(long.success.sum()) > int(short.success.sum())


def test_early_abort_saves_gradients(lenet, batch):
    inputs, labels = batch
    aborting = CW(steps=60, binary_search_steps=2)(lenet, inputs, labels)
    full = CW(steps=60, binary_search_steps=2, abort_early=False)(lenet, inputs, labels)
    assert aborting.cost.gradients < full.cost.gradients
    assert full.cost.gradients == 60 * 2 * int(full.attacked.sum())


def test_kappa_enforces_margin(lenet, batch):
    inputs, labels = batch
    plain = CW(steps=40, binary_search_steps=3, initial_const=1.0)(lenet, inputs, labels)
    confident = CW(steps=40, binary_search_steps=3, initial_const=1.0, kappa=5.0)(lenet, inputs, labels)
    fooled = confident.success & confident.attacked
    assert int(fooled.sum()) > 0
    with torch.no_grad():
        margins = -logit_margin(lenet(confident.adversarial[fooled]), labels[fooled], None)
    assert float(margins.min()) >= 5.0 - 1e-3
    both = fooled & plain.success & plain.attacked
    assert float(confident.l2[both].mean()) > float(plain.l2[both].mean())


def test_targeted_reaches_target(lenet, batch):
    inputs, labels = batch
    targets = (labels + 4) % 10
    result = CW(steps=50, binary_search_steps=4, initial_const=0.1, learning_rate=0.05)(lenet, inputs, labels, targets)
    with torch.no_grad():
        fresh = lenet(result.adversarial).argmax(1)
    assert torch.equal(result.success, fresh == targets)
    assert result.success_rate > 0.8


@pytest.mark.parametrize(
    "bad",
    [{"steps": 0}, {"binary_search_steps": 0}, {"initial_const": 0.0}, {"learning_rate": -1.0}, {"kappa": -0.5}],
)
def test_invalid_settings_rejected(bad):
    with pytest.raises(ParameterError):
        CW(**bad)


def test_failed_samples_continue_searching(lenet, fashion_test):
    # Runs of 10 steps each reach the boundary only when they build on each other.
    inputs, labels = fashion_test.images[:64], fashion_test.labels[:64]
    result = CW(steps=10, binary_search_steps=5, initial_const=1.0)(lenet, inputs, labels)
    assert result.success_rate > 0.8
    assert bool((result.l2[result.success & result.attacked] > 0).all())


class _ByteRange(torch.nn.Module):
    """The shipped LeNet taking pixels in [0, 255]."""

    bounds = (0.0, 255.0)

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inputs):
        return self.model(inputs / 255)


def test_byte_range_model_as_vulnerable(lenet, batch):
    inputs, labels = batch
    attack = CW(steps=30, binary_search_steps=3)
    unit = attack(lenet, inputs, labels)
    byte = attack(_ByteRange(lenet), inputs * 255, labels)
    assert int(byte.success.sum()) >= int(unit.success.sum()) - 1
    # The same images, scaled: the L2 norms scale by 255.
    fooled = byte.success & unit.success & ~unit.already_adversarial
    assert torch.allclose(byte.l2[fooled] / 255, unit.l2[fooled], rtol=0.05)

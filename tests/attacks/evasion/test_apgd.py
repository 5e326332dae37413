"""APGD: checkpoint schedule, the DLR loss, budgets, strength and targeted runs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlwarden.attacks.evasion import APGD, BIM, L2APGD
from mlwarden.attacks.evasion.apgd import apgd_checkpoints, dlr_loss
from mlwarden.errors import ParameterError


def test_checkpoints_follow_schedule():
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(10) == [3, 5, 6, 7, 8, 9]
    assert apgd_checkpoints(1) == []


def test_dlr_loss_values():
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0]])
    label = torch.tensor([0])
    assert float(dlr_loss(logits, label)) == pytest.approx(-(3 - 1) / (3 - 0))
    target = torch.tensor([2])
    assert float(dlr_loss(logits, label, target)) == pytest.approx(-(3 - 0) / (3 - (0 - 1) / 2))


def test_dlr_loss_targeted_rejects_three_classes():
    # With 3 classes the 3rd largest logit can be the target's own: the ratio would be a constant -1 here.
    logits = torch.tensor([[2.0, 1.0, -1.0]])
    with pytest.raises(ValueError, match="at least 4 classes"):
        dlr_loss(logits, torch.tensor([0]), torch.tensor([2]))


def test_dlr_loss_rejects_two_classes():
    with pytest.raises(ValueError, match="at least 3 classes"):
        dlr_loss(torch.zeros(1, 2), torch.tensor([0]))


@settings(max_examples=30, deadline=None)
@given(
    scale=st.floats(0.1, 100.0),
    shift=st.floats(-50.0, 50.0),
    seed=st.integers(0, 1000),
)
def test_dlr_loss_invariant_to_logit_scale_and_shift(scale, shift, seed):
    logits = torch.randn(6, 10, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    labels = torch.arange(6) % 10
    base = dlr_loss(logits, labels)
    assert torch.allclose(dlr_loss(logits * scale + shift, labels), base, atol=1e-6)


@pytest.mark.parametrize(
    ("attack", "eps"),
    [(APGD(steps=20), 0.03), (APGD(loss="dlr", steps=20), 0.03), (L2APGD(steps=20), 0.5)],
    ids=["linf-ce", "linf-dlr", "l2-ce"],
)
def test_output_within_budget_and_bounds(attack, eps, lenet, small_batch):
    inputs, labels = small_batch
    result = attack(lenet, inputs, labels, eps=eps)
    norms = result.linf if attack.norm == "linf" else result.l2
    assert float(norms.max()) <= eps + 1e-5
    assert float(result.adversarial.min()) >= 0.0
    assert float(result.adversarial.max()) <= 1.0
    assert int((result.success & result.attacked).sum()) > 0


def test_stronger_than_bim_at_small_budget(lenet, small_batch):
    inputs, labels = small_batch
    bim = BIM(steps=20)(lenet, inputs, labels, eps=0.02)
    apgd = APGD(steps=20)(lenet, inputs, labels, eps=0.02)
    assert apgd.accuracy <= bim.accuracy


def test_same_seed_same_result(lenet, small_batch):
    inputs, labels = small_batch
    first = APGD(steps=10, seed=1)(lenet, inputs, labels, eps=0.02)
    second = APGD(steps=10, seed=1)(lenet, inputs, labels, eps=0.02)
    assert torch.equal(first.adversarial, second.adversarial)


def test_result_independent_of_batching(lenet, small_batch):
    inputs, labels = small_batch[0][:24], small_batch[1][:24]
    attack = APGD(loss="dlr", steps=10, restarts=2)
    whole = attack(lenet, inputs, labels, eps=0.02)
    parts = [attack(lenet, inputs[s : s + 8], labels[s : s + 8], eps=0.02, indices=torch.arange(s, s + 8)) for s in (0, 8, 16)]
    assert torch.equal(torch.cat([p.success for p in parts]), whole.success)
    assert torch.allclose(torch.cat([p.adversarial for p in parts]), whole.adversarial, atol=1e-2)


def test_restarts_keep_every_success_of_one_run(lenet, small_batch):
    inputs, labels = small_batch
    single = APGD(steps=10)(lenet, inputs, labels, eps=0.015)
    several = APGD(steps=10, restarts=3)(lenet, inputs, labels, eps=0.015)
    assert bool((several.success | ~single.success).all())


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_targeted_reaches_target(loss, lenet, small_batch):
    inputs, labels = small_batch
    targets = (labels + 5) % 10
    result = APGD(loss=loss, steps=30)(lenet, inputs, labels, targets, eps=0.15)
    with torch.no_grad():
        fresh = lenet(result.adversarial).argmax(1)
    assert torch.equal(result.success, fresh == targets)
    assert result.success_rate > 0.8


@pytest.mark.parametrize(
    "bad",
    [{"loss": "hinge"}, {"steps": 0}, {"rho": 0.0}, {"rho": 1.5}, {"alpha": 0.0}, {"restarts": 2, "random_start": False}],
)
def test_invalid_settings_rejected(bad):
    with pytest.raises(ParameterError):
        APGD(**bad)


def test_settings_hide_logging_state():
    assert "logged_adaptations" not in APGD().settings()


@pytest.mark.parametrize("name", ["apgd-ce", "apgd-dlr"])
def test_default_budget_follows_norm(name):
    from mlwarden.attacks.registry import get_attack_entry

    entry = get_attack_entry(name)
    assert entry.build({})[1]["eps"] == 0.1
    assert entry.build({"norm": "l2"})[1]["eps"] == 1.5
    assert entry.build({"norm": "l2", "eps": 0.5})[1]["eps"] == 0.5

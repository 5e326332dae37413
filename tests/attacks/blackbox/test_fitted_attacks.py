"""Attacks fitted before they run: universal perturbation, adversarial patch, transfer through a surrogate."""

from __future__ import annotations

import pytest
import torch

from mlwarden.assess.context import AssessmentContext
from mlwarden.attacks.evasion import AdversarialPatch, TransferAttack, UniversalPerturbation
from mlwarden.errors import ModelError, ParameterError
from mlwarden.models import ModuleQueryModel


@pytest.fixture(scope="module")
def unseen(fashion_test):
    """Test images 1000-1199: never used to fit anything."""
    return fashion_test.images[1000:1200], fashion_test.labels[1000:1200]


def _context(fashion_test, fashion_train, seed: int = 0) -> AssessmentContext:
    return AssessmentContext(test=fashion_test, load_train=lambda: fashion_train, seed=seed)


# --- universal perturbation -------------------------------------------------------------------


@pytest.fixture(scope="module")
def universal(lenet, fashion_train):
    attack = UniversalPerturbation(fit_samples=1000, epochs=3)
    attack.fit(lenet, fashion_train, eps=0.2)
    return attack


def test_universal_fools_unseen_images(universal, lenet, unseen):
    images, labels = unseen
    result = universal(lenet, images, labels, eps=0.2)
    assert result.success_rate > 0.6
    assert float(result.linf.max()) <= 0.2 + 1e-6


def test_universal_is_one_perturbation(universal, lenet, unseen):
    images, labels = unseen
    result = universal(lenet, images, labels, eps=0.2)
    perturbation = universal.perturbation(0.2)
    assert perturbation.shape == (1, 1, 28, 28)
    # Away from the bounds, every attacked image moved by exactly the same perturbation.
    attacked = result.attacked
    delta = (result.adversarial - result.inputs)[attacked]
    shifted = result.inputs[attacked] + perturbation
    inside = (shifted > 0) & (shifted < 1)
    torch.testing.assert_close(delta[inside], perturbation.expand_as(delta)[inside])


def test_universal_l2_stays_in_ball(lenet, fashion_train, unseen):
    images, labels = unseen
    attack = UniversalPerturbation(norm="l2", fit_samples=300, epochs=1)
    attack.fit(lenet, fashion_train, eps=3.0)
    assert float(attack.perturbation(3.0).norm()) <= 3.0 + 1e-4
    result = attack(lenet, images[:50], labels[:50], eps=3.0)
    assert float(result.l2.max()) <= 3.0 + 1e-4


def test_universal_prepare_fits_on_training_split(lenet, fashion_test, fashion_train, unseen):
    images, labels = unseen
    attack = UniversalPerturbation(fit_samples=200, epochs=1)
    attack.prepare(lenet, _context(fashion_test, fashion_train))
    assert attack.perturbation(0.1) is None
    attack(lenet, images[:20], labels[:20], eps=0.1)
    assert attack.perturbation(0.1) is not None
    again = UniversalPerturbation(fit_samples=200, epochs=1)
    again.prepare(lenet, _context(fashion_test, fashion_train))
    again(lenet, images[:20], labels[:20], eps=0.1)
    assert torch.equal(attack.perturbation(0.1), again.perturbation(0.1))


def test_universal_needs_fitting_data(lenet, unseen):
    images, labels = unseen
    with pytest.raises(ParameterError, match="call fit"):
        UniversalPerturbation()(lenet, images[:4], labels[:4], eps=0.1)


def test_universal_on_query_model_fails_clearly(lenet, fashion_train, unseen):
    images, labels = unseen
    attack = UniversalPerturbation(fit_samples=100, epochs=1)
    with pytest.raises(ModelError, match="attack 'universal' is white-box"):
        attack.fit(ModuleQueryModel(lenet), fashion_train, eps=0.1)


# --- adversarial patch ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def patch_attack(lenet, fashion_train):
    attack = AdversarialPatch(fit_samples=1000, epochs=3)
    attack.fit(lenet, fashion_train, target=8)
    return attack


def test_patch_turns_unseen_images_into_target(patch_attack, lenet, unseen):
    images, labels = unseen
    targets = torch.full_like(labels, 8)
    result = patch_attack(lenet, images, labels, targets)
    assert result.success_rate > 0.6
    assert bool((result.predictions[result.success] == 8).all())


def test_patch_positions_vary_and_repeat(patch_attack):
    rows, cols = patch_attack.positions(torch.arange(1000, 1200), 28, 28)
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 20
    assert int(rows.max()) <= 28 - patch_attack.size
    again_rows, again_cols = patch_attack.positions(torch.arange(1100, 1200), 28, 28)
    assert torch.equal(again_rows, rows[100:])
    assert torch.equal(again_cols, cols[100:])


def test_patch_changes_only_its_square(patch_attack, lenet, unseen):
    images, labels = unseen
    targets = torch.full_like(labels, 8)
    result = patch_attack(lenet, images[:50], labels[:50], targets[:50])
    changed = (result.adversarial != result.inputs).flatten(1).sum(1)
    assert int(changed.max()) <= patch_attack.size**2
    assert float(result.adversarial.min()) >= 0.0
    assert float(result.adversarial.max()) <= 1.0


def test_patch_is_targeted_only(patch_attack, lenet, unseen):
    images, labels = unseen
    with pytest.raises(ParameterError, match="targeted attack"):
        patch_attack(lenet, images[:4], labels[:4])
    with pytest.raises(ParameterError, match="smaller than the images"):
        AdversarialPatch(size=28).fit(lenet, _small_train(), target=1)


def _small_train():
    from mlwarden.data import Dataset

    return Dataset(torch.rand(20, 1, 28, 28), torch.zeros(20, dtype=torch.int64), tuple("ab"), "random", "train")


# --- transfer ---------------------------------------------------------------------------------


def test_transfer_rejects_black_box_attack():
    with pytest.raises(ParameterError, match="must be a white-box attack"):
        TransferAttack(attack="square")
    with pytest.raises(ParameterError, match="attack_settings must be a mapping"):
        TransferAttack(attack_settings=[1])


def test_transfer_needs_surrogate(lenet, unseen):
    images, labels = unseen
    with pytest.raises(ParameterError, match="no surrogate yet"):
        TransferAttack()(lenet, images[:4], labels[:4], eps=0.1)


def test_transfer_settings_keep_norm_of_white_box():
    attack = TransferAttack(attack="deepfool")
    assert attack.norm == "l2"
    assert "early_stop" not in attack.attack_settings
    assert TransferAttack().norm == "linf"
    assert set(TransferAttack().settings()) >= {"attack", "labels", "surrogate"}


def test_transfer_with_query_labels_counts_queries(lenet, fashion_train, unseen):
    images, labels = unseen
    target = ModuleQueryModel(lenet)
    attack = TransferAttack(labels="queries", train_samples=1000, epochs=1)
    attack.fit(target, fashion_train)
    assert attack.fitting_queries == 1000
    assert target.queries == 1000
    assert 0.0 < attack.surrogate_agreement <= 1.0
    result = attack(target, images[:50], labels[:50], eps=0.1)
    # Transfer sends no query per sample to the target beyond the evaluation itself.
    assert target.queries == 1000
    assert int(result.queries_per_sample.sum()) == 0

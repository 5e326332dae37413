"""The ``strongest`` per-sample ensemble and the registered names of the white-box suite."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mlwarden.attacks.evasion import APGD, BIM, CW, PGD, L2StrongestAttack, StrongestAttack
from mlwarden.attacks.registry import get_attack_entry
from mlwarden.errors import ParameterError, PlanError
from mlwarden.threat import Specificity


def test_keeps_union_of_member_successes(lenet, small_batch):
    inputs, labels = small_batch
    members = [PGD(steps=10), APGD(loss="dlr", steps=10)]
    ensemble = StrongestAttack(attacks=members)(lenet, inputs, labels, eps=0.02)
    alone = [member(lenet, inputs, labels, eps=0.02) for member in members]
    union = alone[0].success | alone[1].success
    assert torch.equal(ensemble.success, union)
    assert ensemble.accuracy <= min(result.accuracy for result in alone)


def test_keeps_smallest_successful_perturbation(lenet, small_batch):
    inputs, labels = small_batch
    # BIM stops at the first adversarial iterate and PGD with random start does not start
    # at the input, so the two find perturbations of different sizes.
    members = [PGD(steps=10, early_stop=False), BIM(steps=10)]
    ensemble = StrongestAttack(attacks=members)(lenet, inputs, labels, eps=0.05)
    alone = [member(lenet, inputs, labels, eps=0.05) for member in members]
    linf = torch.stack([torch.where(r.success, r.linf, float("inf")) for r in alone])
    fooled = ensemble.success & ensemble.attacked
    assert int(fooled.sum()) > 0
    assert torch.allclose(ensemble.linf[fooled], linf.min(0).values[fooled], atol=1e-6)


def test_counts_member_cost(lenet, small_batch):
    inputs, labels = small_batch
    member = PGD(steps=5)
    ensemble = StrongestAttack(attacks=[member])(lenet, inputs, labels, eps=0.02)
    alone = member(lenet, inputs, labels, eps=0.02)
    assert ensemble.cost.gradients == alone.cost.gradients


def test_member_names_resolve_through_registry():
    ensemble = StrongestAttack(attacks=["pgd", "apgd-dlr"])
    assert [type(a).__name__ for a in ensemble.attacks] == ["ProjectedGradientDescent", "AutoProjectedGradientDescent"]
    assert ensemble.attacks[1].loss == "dlr"


def test_default_members_share_seed():
    ensemble = StrongestAttack(seed=5)
    assert [a.seed for a in ensemble.attacks] == [5, 5, 5]
    assert {a.norm for a in L2StrongestAttack().attacks} == {"l2"}


def test_rejects_member_of_other_norm():
    with pytest.raises(ParameterError, match="linf"):
        StrongestAttack(attacks=[CW()])
    with pytest.raises(ParameterError, match="at least one"):
        StrongestAttack(attacks=[])


def test_rejects_targets_for_untargeted_member(lenet, small_batch):
    class UntargetedPGD(PGD):
        profile = dataclasses.replace(PGD.profile, specificity=(Specificity.UNTARGETED,))

    inputs, labels = small_batch
    ensemble = StrongestAttack(attacks=[PGD(steps=2), UntargetedPGD(steps=2)])
    with pytest.raises(ParameterError, match="cannot run targeted"):
        ensemble(lenet, inputs, labels, (labels + 1) % 10, eps=0.05)


@pytest.mark.parametrize(
    ("name", "norm", "eps"),
    [
        ("pgd", "linf", 0.1),
        ("pgd-l2", "l2", 1.5),
        ("apgd-ce", "linf", 0.1),
        ("apgd-dlr", "linf", 0.1),
        ("cw", "l2", None),
        ("strongest", "linf", 0.1),
        ("strongest-l2", "l2", 1.5),
    ],
)
def test_registered_name_builds(name, norm, eps):
    attack, call = get_attack_entry(name).build({})
    assert attack.norm == norm
    assert call.get("eps") == eps


def test_registered_apgd_takes_norm_setting():
    attack, _ = get_attack_entry("apgd-dlr").build({"norm": "l2", "steps": 7})
    assert (attack.norm, attack.loss, attack.steps) == ("l2", "dlr", 7)
    with pytest.raises(ParameterError, match="norm"):
        get_attack_entry("apgd-ce").build({"norm": "l1"})
    with pytest.raises(PlanError, match="no setting"):
        get_attack_entry("apgd-ce").build({"loss": "dlr"})


def test_single_member_given_as_a_bare_name():
    assert [member.name for member in StrongestAttack(attacks="pgd").attacks] == ["pgd"]


def test_attack_classes_importable_from_attacks_package():
    import mlwarden.attacks as attacks
    from mlwarden.attacks import evasion

    assert set(evasion.__all__) <= set(attacks.__all__)
    assert attacks.PGD is PGD
    assert attacks.StrongestAttack is StrongestAttack

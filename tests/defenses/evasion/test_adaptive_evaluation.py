"""Adaptive evaluation: attacks that see through each defense do better than the standard attack.

Every case runs through :func:`mlwarden.assess.defended.run_defense`, the
path of ``mlwarden assess --defense``, on 100 held-out test images with BIM
at eps 0.05.
"""

from __future__ import annotations

import pytest

from mlwarden.assess.context import AssessmentContext
from mlwarden.assess.defended import run_defense
from mlwarden.assess.plan import AttackSpec, DefenseSpec, parse_spec
from mlwarden.defenses.registry import DEFENSES

ATTACKS = (AttackSpec("bim", {"eps": 0.05, "steps": 10}),)

# (defense spec, least gap between standard and adaptive accuracy). The median has a usable gradient
# through autograd, so the worst case of both attacks is only required not to be higher.
MODEL_DEFENSES = [
    ("bit-depth:bits=4", 0.3),
    ("jpeg:quality=75", 0.3),
    ("median:size=2", 0.0),
    ("random-resize:eot_samples=8", 0.05),
    ("random-transform:eot_samples=8", 0.05),
    ("ensemble:members=[lenet5],vote=majority", 0.3),
    ("smoothing:samples=16,predict_n=64,eot_samples=8,certify_limit=20,n0=16,n=128", 0.1),
]


@pytest.fixture(scope="module")
def context(fashion_test, fashion_train):
    data = fashion_test.subset(100)
    return AssessmentContext(test=data, load_train=lambda: fashion_train, seed=0, batch_size=100, bounds=(0.0, 1.0))


def _run(text, lenet, context):
    name, settings = parse_spec(text, "defense")
    return run_defense(DefenseSpec(name, settings), lenet, context.test, context, ATTACKS, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("text, gap", MODEL_DEFENSES, ids=[text.split(":")[0] for text, _ in MODEL_DEFENSES])
def test_adaptive_attack_beats_standard_attack(lenet, context, text, gap):
    record = _run(text, lenet, context)
    (outcome,) = record["attacks"]
    standard, adaptive = outcome["standard"]["accuracy"], outcome["adaptive"]["accuracy"]
    assert adaptive <= standard - gap
    if gap > 0:
        assert adaptive < standard
    assert record["adaptive_method"]
    assert record["known_bypass"]


@pytest.mark.slow
@pytest.mark.parametrize("text", ["squeeze-detector:fit_samples=2000", "mahalanobis:fit_samples=3000"])
def test_detector_adaptive_attack_lowers_defended_accuracy(lenet, context, text):
    record = _run(text, lenet, context)
    (outcome,) = record["attacks"]
    assert outcome["adaptive"]["accuracy"] < outcome["standard"]["accuracy"]
    assert outcome["adaptive"]["tpr"] < 0.1
    assert record["fpr_target"] == 0.05
    assert 0.0 <= record["fpr_measured"] <= 0.2
    assert 0.0 <= outcome["standard"]["roc_auc"] <= 1.0


def test_every_registered_defense_gets_an_adaptive_attack(lenet):
    """A defense evaluated only with the standard attack would report hidden gradients as robustness."""
    from mlwarden.defenses.evasion import adaptive_method, adaptive_model

    missing = []
    for name, entry in DEFENSES.items():
        settings = {"members": ["lenet5"]} if name == "ensemble" else {}
        defense, _ = entry.build(lenet, None, settings)
        method = adaptive_method(defense)
        if entry.kind == "model" and adaptive_model(defense) is defense and not method.startswith("same attack"):
            missing.append(name)
        if not method or not getattr(defense, "known_bypass", ""):
            missing.append(name)
    assert missing == []


def test_smoothing_record_has_certified_accuracy(lenet, context):
    record = _run("smoothing:samples=8,predict_n=32,eot_samples=2,certify_limit=10,n0=8,n=64,radii=[0.1,0.25]", lenet, context)
    certified = record["certified"]
    assert certified["radii"] == [0.1, 0.25]
    assert certified["samples"] == 10
    assert certified["accuracy"][0] >= certified["accuracy"][1]
    assert len(certified["per_sample"]["radius"]) == 10


def test_every_defense_docstring_names_its_bypass():
    from mlwarden.defenses import evasion

    classes = [
        evasion.BitDepthReduction,
        evasion.MedianSmoothing,
        evasion.JpegCompression,
        evasion.RandomResizePad,
        evasion.RandomTransformation,
        evasion.Ensemble,
        evasion.RandomizedSmoothing,
        evasion.FeatureSqueezingDetector,
        evasion.MahalanobisDetector,
        *evasion.TRAINING_DEFENSES.values(),
    ]
    undocumented = [cls.__name__ for cls in classes if "fall to" not in " ".join((cls.__doc__ or "").split())]
    assert undocumented == []

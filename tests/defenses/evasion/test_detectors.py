"""Detectors of adversarial inputs: calibrated false-positive rates, detection, and the adaptive attack."""

from __future__ import annotations

import logging

import pytest
import torch
from sklearn.metrics import roc_auc_score

from mlwarden.attacks import BIM
from mlwarden.defenses.evasion import FeatureSqueezingDetector, MahalanobisDetector, detector_aware_attack
from mlwarden.errors import ParameterError

TARGET_FPR = 0.05


@pytest.fixture(scope="module")
def mahalanobis(lenet, fashion_train):
    return MahalanobisDetector(lenet, fpr=TARGET_FPR).fit(fashion_train.images[:5000], fashion_train.labels[:5000])


@pytest.fixture(scope="module")
def squeezing(lenet, fashion_test):
    # Calibrated on test images 5000-6999, evaluated on 0-2999: disjoint held-out sets.
    return FeatureSqueezingDetector(lenet, fpr=TARGET_FPR).fit(fashion_test.images[5000:7000])


@pytest.fixture(scope="module")
def bim_batch(lenet, fashion_test):
    images, labels = fashion_test.images[:200], fashion_test.labels[:200]
    result = BIM(steps=10)(lenet, images, labels, eps=0.05)
    return images, labels, result


@pytest.mark.parametrize("name", ["mahalanobis", "squeezing"])
def test_detector_fpr_on_held_out_clean_data_is_near_target(request, fashion_test, name):
    detector = request.getfixturevalue(name)
    measured = float(detector.predict(fashion_test.images[:3000]).float().mean())
    assert abs(measured - TARGET_FPR) < 0.03


def test_detector_fpr_follows_a_looser_target(lenet, fashion_test):
    detector = FeatureSqueezingDetector(lenet, fpr=0.2).fit(fashion_test.images[5000:7000])
    measured = float(detector.predict(fashion_test.images[:3000]).float().mean())
    assert abs(measured - 0.2) < 0.04


@pytest.mark.parametrize("name, min_auc", [("mahalanobis", 0.55), ("squeezing", 0.8)])
def test_detector_separates_bim_examples(request, bim_batch, name, min_auc):
    detector = request.getfixturevalue(name)
    images, _, result = bim_batch
    successful = result.success & result.attacked
    clean_scores = detector.score_samples(images)
    adversarial_scores = detector.score_samples(result.adversarial)[successful]
    truth = [0] * len(clean_scores) + [1] * len(adversarial_scores)
    assert roc_auc_score(truth, torch.cat([clean_scores, adversarial_scores]).tolist()) > min_auc


@pytest.mark.parametrize("name", ["mahalanobis", "squeezing"])
def test_detector_aware_attack_evades_detection(request, lenet, bim_batch, name):
    detector = request.getfixturevalue(name)
    images, labels, result = bim_batch
    standard_successful = result.success & result.attacked
    standard_tpr = float(detector.predict(result.adversarial)[standard_successful].float().mean())

    adversarial = detector_aware_attack(lenet, detector, images, labels, eps=0.05, steps=40)
    assert float((adversarial - images).abs().max()) <= 0.05 + 1e-6
    with torch.no_grad():
        fooled = lenet(adversarial).argmax(1) != labels
    flagged = detector.predict(adversarial)
    adaptive_tpr = float(flagged[fooled & result.attacked].float().mean())
    assert float((fooled & ~flagged).float().mean()) > float((standard_successful & ~detector.predict(result.adversarial)).float().mean())
    assert adaptive_tpr < standard_tpr or standard_tpr == 0.0
    assert adaptive_tpr < 0.1


def test_mahalanobis_layer_hook_matches_features(lenet, fashion_train):
    hooked = MahalanobisDetector(lenet, layer="hidden").fit(fashion_train.images[:1000], fashion_train.labels[:1000])
    built_in = MahalanobisDetector(lenet).fit(fashion_train.images[:1000], fashion_train.labels[:1000])
    sample = fashion_train.images[1000:1050]
    assert torch.allclose(hooked.score_samples(sample), built_in.score_samples(sample), rtol=1e-4)


def test_mahalanobis_rejects_unknown_layer(lenet):
    with pytest.raises(ParameterError, match="no submodule 'head'"):
        MahalanobisDetector(lenet, layer="head")


def test_mahalanobis_needs_labels(lenet, small_batch):
    with pytest.raises(ParameterError, match="fit needs int64 labels"):
        MahalanobisDetector(lenet).fit(small_batch[0])


def test_detector_must_be_fitted_before_scoring(lenet, small_batch):
    with pytest.raises(ParameterError, match="not fitted"):
        FeatureSqueezingDetector(lenet).predict(small_batch[0])


def test_calibration_on_too_few_inputs_warns(lenet, small_batch, caplog):
    with caplog.at_level(logging.WARNING, logger="mlwarden.defenses.evasion.base"):
        FeatureSqueezingDetector(lenet, fpr=0.01).fit(small_batch[0][:20])
    assert "too few for fpr=0.01" in caplog.text


@pytest.mark.parametrize("fpr", [0.0, 1.0, -0.1])
def test_detector_rejects_invalid_fpr(lenet, fpr):
    with pytest.raises(ParameterError, match="fpr must be a number in"):
        FeatureSqueezingDetector(lenet, fpr=fpr)

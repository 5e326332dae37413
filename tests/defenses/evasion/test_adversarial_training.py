"""Robust training: the inner attacks, the batch losses, ``mlwarden train --defense`` and the shipped robust LeNet."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
import torch

from mlwarden.attacks.evasion.pgd import ProjectedGradientDescent
from mlwarden.cli.main import main
from mlwarden.defenses.evasion import TRAINING_DEFENSES, build_training_defense, pgd_perturbation, robust_accuracy
from mlwarden.errors import ParameterError
from mlwarden.models import LeNet5, load_from_weights, resolve_model
from mlwarden.models.zoo import WEIGHTS_DIR

ROBUST_WEIGHTS = WEIGHTS_DIR / "lenet5-fashion-mnist-pgd.safetensors"


def test_pgd_perturbation_stays_in_ball_and_bounds(lenet, small_batch):
    images, labels = small_batch
    adversarial = pgd_perturbation(lenet, images, labels, eps=0.1, steps=5, generator=torch.Generator().manual_seed(0))
    assert float((adversarial - images).abs().max()) <= 0.1 + 1e-6
    assert float(adversarial.min()) >= 0.0
    assert float(adversarial.max()) <= 1.0
    with torch.no_grad():
        assert float((lenet(adversarial).argmax(1) == labels).float().mean()) < 0.3


@pytest.mark.parametrize("name", sorted(TRAINING_DEFENSES))
def test_training_loss_is_differentiable_and_keeps_mode(small_batch, name):
    torch.manual_seed(0)
    model = LeNet5().train()
    images, labels = small_batch
    method = build_training_defense(f"{name}:steps=2" if name in ("pgd", "trades") else name)
    loss = method(model, images[:16], labels[:16])
    assert loss.dim() == 0
    assert model.training
    loss.backward()
    assert model.classifier.weight.grad is not None
    assert float(model.classifier.weight.grad.abs().sum()) > 0


def test_training_defense_describes_itself():
    described = build_training_defense("trades:eps=0.05,beta=3").describe()
    assert described["name"] == "trades"
    assert described["eps"] == 0.05
    assert described["beta"] == 3.0
    assert described["known_bypass"]


def test_training_defense_rejects_unknown_names():
    with pytest.raises(ParameterError, match="unknown training defense 'mixup'"):
        build_training_defense("mixup")
    with pytest.raises(ParameterError, match="training defense 'fgsm' has no setting 'steps'"):
        build_training_defense("fgsm:steps=3")
    with pytest.raises(ParameterError, match="eps must be a number > 0"):
        build_training_defense("pgd:eps=0")


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.mark.slow
def test_train_cli_records_the_defense(tmp_path, fashion_test, capsys):
    data = tmp_path / "fashion-small"
    data.mkdir()
    images = (fashion_test.images[:, 0] * 255).round().numpy().astype(np.uint8)
    labels = fashion_test.labels.numpy().astype(np.uint8)
    _write_idx(data / "train-images-idx3-ubyte.gz", images[:512])
    _write_idx(data / "train-labels-idx1-ubyte.gz", labels[:512])
    _write_idx(data / "t10k-images-idx3-ubyte.gz", images[9800:])
    _write_idx(data / "t10k-labels-idx1-ubyte.gz", labels[9800:])
    output = tmp_path / "robust.safetensors"
    arguments = ["train", "--data", str(data), "--epochs", "1", "--output", str(output)]

    assert main([*arguments, "--defense", "pgd:steps=2,evaluation_samples=100"]) == 0

    assert "robust accuracy" in capsys.readouterr().out
    sidecar = json.loads(output.with_suffix(".json").read_text())
    assert sidecar["defense"]["name"] == "pgd"
    assert sidecar["defense"]["steps"] == 2
    assert "robust_accuracy" in sidecar["training"]["history"][0]
    assert resolve_model(str(output)).metadata["defense"]["name"] == "pgd"


def test_train_cli_rejects_unknown_defense(capsys):
    assert main(["train", "--defense", "mixup", "--epochs", "1"]) == 2
    assert "unknown training defense 'mixup'" in capsys.readouterr().err


@pytest.mark.slow
def test_robust_lenet_beats_plain_lenet_under_pgd(lenet, fashion_test):
    robust, sidecar = load_from_weights(ROBUST_WEIGHTS)
    assert sidecar["defense"]["name"] == "pgd"
    # Test images 5000-5499: never used for training nor for the per-epoch robust accuracy.
    images, labels = fashion_test.images[5000:5500], fashion_test.labels[5000:5500]
    attack = ProjectedGradientDescent(steps=20, seed=0)
    plain_accuracy = attack(lenet, images, labels, eps=0.1).accuracy
    robust_accuracy_under_pgd = attack(robust, images, labels, eps=0.1).accuracy
    assert robust_accuracy_under_pgd > plain_accuracy + 0.3
    assert robust_accuracy(robust, images, labels, eps=0.1, steps=10) > 0.4

"""Assessments feed the data in the range the model declares through its ``bounds`` attribute."""

from __future__ import annotations

import logging

import pytest
import torch

from mlwarden.assess.plan import AttackSpec, Plan
from mlwarden.assess.runner import run_assessment
from mlwarden.data import load_dataset

MODULE = '''
import torch
from mlwarden.models import load_pretrained


class Scaled(torch.nn.Module):
    def __init__(self, low, high):
        super().__init__()
        self.bounds = (low, high)
        self.model, _ = load_pretrained("lenet5")

    def forward(self, inputs):
        low, high = self.bounds
        return self.model((inputs - low) / (high - low))


def plus_minus_one():
    return Scaled(-1.0, 1.0)


def byte_range():
    return Scaled(0.0, 255.0)
'''


@pytest.fixture
def scaled_models(tmp_path, monkeypatch):
    (tmp_path / "scaled_models.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "scaled_models"


@pytest.mark.parametrize(("factory", "bounds"), [("plus_minus_one", [-1.0, 1.0]), ("byte_range", [0.0, 255.0])])
def test_data_scaled_to_model_bounds(factory, bounds, scaled_models, lenet, caplog):
    plan = Plan(model=f"{scaled_models}:{factory}", limit=100, attacks=(AttackSpec("fgsm", {"eps": 0.0}),))
    with caplog.at_level(logging.WARNING, logger="mlwarden.data.datasets"):
        results = run_assessment(plan, progress=False)
    data = load_dataset("fashion-mnist", "test").subset(100)
    with torch.no_grad():
        expected = float((lenet(data.images).argmax(1) == data.labels).float().mean())
    assert results["clean"]["accuracy"] == pytest.approx(expected)
    assert results["data"]["bounds"] == bounds
    assert f"to the model's bounds [{bounds[0]:g}, {bounds[1]:g}]" in caplog.text

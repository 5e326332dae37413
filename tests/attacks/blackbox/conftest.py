"""Fixtures of the black-box attack tests: query models that record what attacks send them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from mlwarden.data import Dataset, load_dataset
from mlwarden.models import QueryModel, export_onnx


class RecordingModel(nn.Module):
    """Wraps a classifier and records the range and number of every input row it receives."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rows = 0
        self.lowest = float("inf")
        self.highest = float("-inf")
        self.bounds = getattr(model, "bounds", (0.0, 1.0))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self.rows += inputs.shape[0]
        if inputs.numel():
            self.lowest = min(self.lowest, float(inputs.detach().min()))
            self.highest = max(self.highest, float(inputs.detach().max()))
        return self.model(inputs)


class LabelsOnlyModel(QueryModel):
    """A decision-based API over a classifier whose score methods fail the test if called."""

    def __init__(self, model: nn.Module, *, budget: int | None = None, num_classes: int = 10) -> None:
        super().__init__(output="labels", budget=budget, num_classes=num_classes)
        self.model = model

    def _predict(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs).argmax(1)

    def predict_scores(self, inputs: torch.Tensor) -> torch.Tensor:
        pytest.fail("a decision-based attack read the model's scores")

    def _scores(self, inputs: torch.Tensor) -> torch.Tensor:
        pytest.fail("a decision-based attack read the model's scores")


@pytest.fixture(scope="session")
def fashion_train() -> Dataset:
    """The real Fashion-MNIST training split."""
    return load_dataset("fashion-mnist", "train")


@pytest.fixture(scope="session")
def correct_batch(fashion_test: Dataset, lenet: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Twelve test images that the shipped LeNet classifies correctly, with their labels."""
    with torch.no_grad():
        correct = (lenet(fashion_test.images[:40]).argmax(1) == fashion_test.labels[:40]).nonzero().flatten()[:12]
    return fashion_test.images[correct], fashion_test.labels[correct]


@pytest.fixture(scope="session")
def lenet_onnx(tmp_path_factory: pytest.TempPathFactory, lenet: nn.Module) -> Path:
    """The shipped LeNet exported to ONNX with a dynamic batch dimension."""
    return export_onnx(lenet, tmp_path_factory.mktemp("onnx") / "lenet.onnx", (1, 28, 28))


@pytest.fixture
def recording() -> type[RecordingModel]:
    """The class that wraps a classifier and records the inputs it receives."""
    return RecordingModel


@pytest.fixture
def labels_only() -> type[LabelsOnlyModel]:
    """The class of a decision-based API that fails the test when its scores are read."""
    return LabelsOnlyModel

import torch

from mlwarden.data import Dataset
from mlwarden.models import LeNet5, TrainingConfig, train_model


def _subset(data: Dataset, count: int) -> Dataset:
    return data.subset(count)


def test_training_learns_and_is_reproducible(fashion_test):
    train = _subset(fashion_test, 3000)
    test = Dataset(fashion_test.images[5000:6000], fashion_test.labels[5000:6000], fashion_test.class_names, "f", "test")
    config = TrainingConfig(epochs=2, batch_size=64, seed=3)
    weights = []
    for _ in range(2):
        torch.manual_seed(config.seed)
        model = LeNet5()
        history = train_model(model, train, test, config, progress=False)
        weights.append(model.state_dict())
    assert history[-1].test_accuracy > 0.6
    assert not model.training
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key])


def test_training_config_rejects_zero_epochs():
    import pytest

    from mlwarden.errors import ParameterError

    with pytest.raises(ParameterError, match="epochs must be an integer >= 1, got 0"):
        TrainingConfig(epochs=0)

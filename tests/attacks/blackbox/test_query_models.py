"""Query models: counting, hard budgets, score and label views, and the ONNX adapter."""

from __future__ import annotations

import pickle

import pytest
import torch

from mlwarden.attacks import FGSM
from mlwarden.errors import BudgetExhausted, ModelError
from mlwarden.models import (
    CallableQueryModel,
    ModuleQueryModel,
    OnnxQueryModel,
    QueryModel,
    as_query_model,
    resolve_model,
)


def test_budget_rejects_query_that_would_exceed(lenet):
    api = ModuleQueryModel(lenet, budget=10)
    images = torch.rand(6, 1, 28, 28)
    api.predict_labels(images)
    with pytest.raises(BudgetExhausted, match="budget of 10"):
        api.predict_scores(images)
    assert api.queries == 6
    assert api.remaining == 4
    api.predict_labels(images[:4])
    assert api.remaining == 0


def test_forward_counts_evaluations_not_queries(lenet):
    api = ModuleQueryModel(lenet, budget=0)
    output = api(torch.rand(5, 1, 28, 28))
    assert output.shape == (5, 10)
    assert api.queries == 0
    assert api.evaluations == 5


def test_scores_are_probabilities_of_the_logits(lenet, small_batch):
    images, _ = small_batch
    scores = ModuleQueryModel(lenet).predict_scores(images)
    with torch.no_grad():
        expected = torch.softmax(lenet(images), dim=1)
    torch.testing.assert_close(scores, expected)


def test_labels_only_model_hides_scores(lenet, small_batch):
    images, _ = small_batch
    api = ModuleQueryModel(lenet, labels_only=True)
    assert api.decision_based
    with pytest.raises(ModelError, match="labels only"):
        api.predict_scores(images)
    assert api.queries == 0
    with torch.no_grad():
        assert torch.equal(api.predict_labels(images), lenet(images).argmax(1))
    one_hot = api(images)
    assert set(one_hot.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(one_hot.sum(1), torch.ones(len(images)))


def test_callable_returning_labels_needs_num_classes():
    with pytest.raises(ModelError, match="num_classes"):
        CallableQueryModel(lambda x: torch.zeros(len(x), dtype=torch.int64), output="labels")
    api = CallableQueryModel(lambda x: (x.flatten(1).mean(1) > 0.5).long(), output="labels", num_classes=2)
    assert api.predict_labels(torch.ones(3, 1, 2, 2)).tolist() == [1, 1, 1]
    assert api(torch.zeros(2, 1, 2, 2)).argmax(1).tolist() == [0, 0]


def test_callable_with_numpy_probabilities():
    def probabilities(inputs: torch.Tensor):
        return torch.full((len(inputs), 4), 0.25).numpy()

    api = CallableQueryModel(probabilities)
    assert api.predict_scores(torch.rand(3, 1, 2, 2)).shape == (3, 4)
    assert api.num_classes == 4


def test_declared_probabilities_that_are_logits_rejected():
    api = CallableQueryModel(lambda x: torch.randn(len(x), 3) * 5, output="probabilities")
    with pytest.raises(ModelError, match="output='logits'"):
        api.predict_scores(torch.rand(2, 1, 2, 2))


def test_wrong_output_shape_rejected():
    api = CallableQueryModel(lambda x: torch.zeros(len(x) + 1, 3), output="logits")
    with pytest.raises(ModelError, match="expected"):
        api.predict_scores(torch.rand(2, 1, 2, 2))


def test_as_query_model(lenet):
    api = ModuleQueryModel(lenet)
    assert as_query_model(api) is api
    assert isinstance(as_query_model(lenet), ModuleQueryModel)
    with pytest.raises(ModelError, match="CallableQueryModel"):
        as_query_model(lambda x: x)


def test_white_box_attack_on_query_model_names_both(lenet, correct_batch):
    images, labels = correct_batch
    with pytest.raises(ModelError, match=r"attack 'fgsm' is white-box.*query model over LeNet5"):
        FGSM()(ModuleQueryModel(lenet), images, labels, eps=0.1)


def test_subclass_only_implements_predict(lenet, small_batch):
    images, _ = small_batch

    class RemoteApi(QueryModel):
        def _predict(self, inputs):
            return lenet(inputs)

    api = RemoteApi(budget=100)
    assert api.predict_labels(images).shape == (64,)
    assert api.remaining == 36


def test_onnx_matches_torch(lenet, lenet_onnx, small_batch):
    images, _ = small_batch
    api = OnnxQueryModel(lenet_onnx)
    assert api.num_classes == 10
    with torch.no_grad():
        expected = torch.softmax(lenet(images), dim=1)
    # The ONNX graph normalizes the pixels once, as the PyTorch model does.
    torch.testing.assert_close(api.predict_scores(images), expected, atol=1e-5, rtol=1e-4)
    assert api.queries == 64


def test_onnx_model_survives_pickling(lenet_onnx, small_batch):
    images, _ = small_batch
    api = OnnxQueryModel(lenet_onnx, budget=100)
    api.predict_labels(images[:10])
    copy = pickle.loads(pickle.dumps(api))
    assert copy.remaining == 90
    assert torch.equal(copy.predict_labels(images[:10]), api.predict_labels(images[:10]))


def test_onnx_white_box_attack_fails_clearly(lenet_onnx, correct_batch):
    images, labels = correct_batch
    loaded = resolve_model(str(lenet_onnx))
    assert isinstance(loaded.model, OnnxQueryModel)
    assert loaded.sha256 is not None
    with pytest.raises(ModelError, match=r"attack 'fgsm' is white-box.*ONNX model lenet.onnx"):
        FGSM()(loaded.model, images, labels, eps=0.1)


def test_onnx_missing_or_corrupt_file(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        OnnxQueryModel(tmp_path / "absent.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not an onnx model")
    with pytest.raises(ModelError, match="ONNX Runtime cannot load"):
        OnnxQueryModel(corrupt)

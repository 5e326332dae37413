import json

import pytest
import torch

from mlwarden.errors import IntegrityError, ModelError
from mlwarden.models import LeNet5, check_model_output, load_pretrained, resolve_model, save_weights
from mlwarden.models.training import evaluate_accuracy
from mlwarden.models.weights import read_sidecar


def test_pretrained_lenet_is_accurate(lenet, fashion_test):
    accuracy = evaluate_accuracy(lenet, fashion_test.images[:2000], fashion_test.labels[:2000])
    assert accuracy > 0.85


def test_pretrained_sidecar_records_provenance():
    _, sidecar = load_pretrained("lenet5")
    assert sidecar["architecture"] == "lenet5"
    assert sidecar["dataset"] == "fashion-mnist"
    assert 0.85 < sidecar["clean_test_accuracy"] < 1.0
    assert len(sidecar["sha256"]) == 64


def test_altered_weights_file_rejected(tmp_path):
    path = save_weights(LeNet5(), tmp_path / "model", {"architecture": "lenet5"})
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="SHA-256"):
        resolve_model(str(path))


def test_weights_round_trip(tmp_path):
    model = LeNet5()
    path = save_weights(model, tmp_path / "model.safetensors", {"architecture": "lenet5", "architecture_kwargs": {}})
    loaded = resolve_model(str(path))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)
    assert read_sidecar(path)["sha256"] == loaded.sha256


def test_torchscript_model_loads(tmp_path, lenet):
    path = tmp_path / "lenet.pt"
    torch.jit.save(torch.jit.script(lenet), str(path))
    loaded = resolve_model(str(path))
    inputs = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(loaded.model(inputs), lenet(inputs))


def test_factory_with_weights_loads(tmp_path, lenet):
    path = tmp_path / "state.pth"
    torch.save(lenet.state_dict(), str(path))
    loaded = resolve_model("mlwarden.models.lenet:LeNet5", weights=str(path))
    inputs = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(loaded.model(inputs), lenet(inputs))


def test_mismatched_weights_named_in_one_line(tmp_path, lenet):
    state = dict(lenet.state_dict())
    state["classifier.weight"] = torch.zeros(3, 3)
    del state["classifier.bias"]
    path = tmp_path / "state.pth"
    torch.save(state, str(path))
    with pytest.raises(ModelError) as caught:
        resolve_model("mlwarden.models.lenet:LeNet5", weights=str(path))
    message = str(caught.value)
    assert "\n" not in message
    assert "1 tensor differs in shape, first 'classifier.weight': (3, 3) in the file" in message
    assert "1 tensor missing from the file, first 'classifier.bias'" in message


def test_junk_weights_rejected_in_one_line(tmp_path):
    path = tmp_path / "junk.bin"
    path.write_bytes(bytes(range(256)))
    with pytest.raises(ModelError) as caught:
        resolve_model("mlwarden.models.lenet:LeNet5", weights=str(path))
    message = str(caught.value)
    assert "\n" not in message
    assert "weights_only=False" not in message
    assert "cannot load" in message


def test_pickle_that_is_not_torchscript_rejected(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"not a zip archive")
    with pytest.raises(ModelError, match="not a TorchScript archive"):
        resolve_model(str(path))


def test_unknown_model_spec_rejected():
    with pytest.raises(ModelError, match="zoo name"):
        resolve_model("resnet999")


def test_missing_factory_rejected():
    with pytest.raises(ModelError, match="no callable"):
        resolve_model("mlwarden.models.lenet:NoSuchFactory")


def test_wrong_output_shape_rejected():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 3))
    with pytest.raises(ModelError, match=r"shape \(2, 3\).*expected \(2, 10\)"):
        check_model_output(model, torch.rand(2, 1, 28, 28), 10)


def test_integer_output_rejected():
    class Labels(torch.nn.Module):
        def forward(self, inputs):
            return torch.zeros(inputs.shape[0], 10, dtype=torch.int64)

    with pytest.raises(ModelError, match="dtype"):
        check_model_output(Labels(), torch.rand(2, 1, 28, 28), 10)


def test_failing_forward_rejected():
    model = torch.nn.Linear(5, 10)
    with pytest.raises(ModelError, match="failed on a batch"):
        check_model_output(model, torch.rand(2, 1, 28, 28), 10)


def test_sidecar_missing_explains_fix(tmp_path):
    path = save_weights(LeNet5(), tmp_path / "model", {"architecture": "lenet5"})
    path.with_suffix(".json").unlink()
    with pytest.raises(ModelError, match="no sidecar"):
        resolve_model(str(path))


def test_sidecar_json_is_readable(tmp_path):
    path = save_weights(LeNet5(), tmp_path / "m", {"architecture": "lenet5", "clean_test_accuracy": 0.5})
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["clean_test_accuracy"] == 0.5

"""The faster layer kernels give the outputs and gradients that torch gives."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlwarden.attacks._fast_layers import _InputGradientConvolution, _MaxPool2x2, fast_layers


def input_gradient(model: nn.Module, inputs: torch.Tensor, fast: bool) -> torch.Tensor:
    inputs = inputs.clone().requires_grad_(True)
    if not fast:
        return torch.autograd.grad(model(inputs).square().sum(), inputs)[0]
    with fast_layers(always=True):
        return torch.autograd.grad(model(inputs).square().sum(), inputs)[0]


def test_lenet_logits_and_gradient_unchanged(lenet, small_batch):
    inputs, labels = small_batch
    inputs = inputs.clone().requires_grad_(True)
    logits = lenet(inputs)
    (expected,) = torch.autograd.grad(F.cross_entropy(logits, labels, reduction="sum"), inputs)
    with fast_layers(always=True):
        fast_logits = lenet(inputs)
        (fast,) = torch.autograd.grad(F.cross_entropy(fast_logits, labels, reduction="sum"), inputs)
    assert torch.allclose(fast_logits, logits, atol=1e-5)
    assert torch.allclose(fast, expected, atol=1e-5)


def test_prediction_without_gradient_unchanged(lenet, small_batch):
    inputs, _ = small_batch
    with torch.no_grad():
        expected = lenet(inputs)
        with fast_layers(always=True):
            fast = lenet(inputs)
    assert torch.allclose(fast, expected, atol=1e-5)


@pytest.mark.parametrize(
    ("channels", "kernel", "padding", "stride", "dilation"),
    [
        (1, 5, 2, 1, 1),
        (2, 3, 0, 1, 1),
        (1, 3, 1, 2, 1),  # stride 2: left to torch
        (1, 3, 2, 1, 2),  # dilation 2: left to torch
        (3, 3, 1, 1, 1),  # three channels: left to torch
        (1, 3, 3, 1, 1),  # padding larger than the kernel: left to torch
    ],
)
def test_convolution_gradients_match(channels, kernel, padding, stride, dilation):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(channels, 4, kernel, padding=padding, stride=stride, dilation=dilation), nn.ReLU(), nn.Flatten()
    )
    inputs = torch.rand(3, channels, 12, 12)
    assert torch.allclose(input_gradient(model, inputs, True), input_gradient(model, inputs, False), atol=1e-5)


def test_weight_gradients_still_computed():
    torch.manual_seed(0)
    layer = nn.Conv2d(1, 4, 5, padding=2)
    inputs = torch.rand(2, 1, 10, 10, requires_grad=True)
    expected = torch.autograd.grad(layer(inputs).square().sum(), [inputs, layer.weight, layer.bias])
    with fast_layers(always=True):
        fast = torch.autograd.grad(layer(inputs).square().sum(), [inputs, layer.weight, layer.bias])
    for got, want in zip(fast, expected):
        assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("size", [(8, 8), (7, 9), (2, 2)])
def test_pooling_with_ties_matches(size):
    # Quantized values make ties within windows common; the first maximum must take the gradient.
    torch.manual_seed(0)
    inputs = (torch.rand(2, 3, *size) * 3).floor().requires_grad_(True)
    weights = torch.rand(2, 3, size[0] // 2, size[1] // 2)
    expected_output = F.max_pool2d(inputs, 2)
    (expected,) = torch.autograd.grad((expected_output * weights).sum(), inputs)
    with fast_layers(always=True):
        output = F.max_pool2d(inputs, 2)
        (fast,) = torch.autograd.grad((output * weights).sum(), inputs)
    assert output.grad_fn.name() == _MaxPool2x2.__name__ + "Backward"
    assert torch.equal(output, expected_output)
    assert torch.equal(fast, expected)


@pytest.mark.parametrize(
    "call",
    [
        {"kernel_size": 3},
        {"kernel_size": 2, "stride": 1},
        {"kernel_size": 2, "padding": 1},
        {"kernel_size": 2, "ceil_mode": True},
    ],
    ids=["kernel-3", "stride-1", "padding-1", "ceil-mode"],
)
def test_other_pooling_left_to_torch(call):
    inputs = torch.rand(1, 2, 9, 9, requires_grad=True)
    with fast_layers(always=True):
        output = F.max_pool2d(inputs, **call)
    assert output.grad_fn.name() != _MaxPool2x2.__name__ + "Backward"
    assert torch.equal(output, F.max_pool2d(inputs, **call))


def test_convolution_rewritten_only_where_it_fits():
    torch.manual_seed(0)
    for layer, rewritten in [(nn.Conv2d(1, 4, 3, padding=1), True), (nn.Conv2d(1, 4, 3, stride=2), False)]:
        inputs = torch.rand(2, 1, 8, 8, requires_grad=True)
        with fast_layers(always=True):
            output = layer(inputs)
        assert (output.grad_fn.name() == _InputGradientConvolution.__name__ + "Backward") == rewritten


def test_model_left_unchanged(lenet):
    before = {name: value.clone() for name, value in lenet.state_dict().items()}
    input_gradient(lenet, torch.rand(2, 1, 28, 28), True)
    after = lenet.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_in_place_layer_after_rewritten_convolution():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten())
    inputs = torch.rand(3, 1, 8, 8)
    assert torch.allclose(input_gradient(model, inputs, True), input_gradient(model, inputs, False), atol=1e-5)


def test_pooling_choice_measured_once_per_kind(monkeypatch):
    from mlwarden.attacks import _fast_layers

    monkeypatch.setattr(_fast_layers, "_POOL_CHOICES", {})
    timings = []
    original = _fast_layers._seconds
    monkeypatch.setattr(_fast_layers, "_seconds", lambda run: timings.append(1) or original(run, repeats=1))
    inputs = torch.rand(16, 2, 6, 6)
    with fast_layers():
        first = F.max_pool2d(inputs, 2)
        second = F.max_pool2d(torch.rand(17, 2, 6, 6), 2)  # same power-of-two batch size: no new timing
    assert len(timings) == 2  # the corner maximum and torch's pooling, each timed once
    assert torch.equal(first, F.max_pool2d(inputs, 2))
    assert second.shape == (17, 2, 3, 3)


@pytest.mark.parametrize("batch", [1, 7, 300])
def test_first_layer_gradient_any_batch(lenet, batch):
    # The rewrite applies to any batch size; the gradient must not depend on it.
    torch.manual_seed(batch)
    inputs = torch.rand(batch, 1, 28, 28)
    assert torch.allclose(input_gradient(lenet, inputs, True), input_gradient(lenet, inputs, False), atol=1e-5)


def test_double_precision_convolution_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 5, padding=1), nn.Flatten()).double()
    inputs = torch.rand(4, 1, 9, 9, dtype=torch.float64)
    assert torch.allclose(input_gradient(model, inputs, True), input_gradient(model, inputs, False), atol=1e-12)

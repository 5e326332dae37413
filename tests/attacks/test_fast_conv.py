"""The faster convolution input gradient gives the gradients torch gives."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlwarden.attacks._fast_conv import fast_input_gradients


def input_gradient(model: nn.Module, inputs: torch.Tensor, fast: bool) -> torch.Tensor:
    inputs = inputs.clone().requires_grad_(True)
    if not fast:
        return torch.autograd.grad(model(inputs).square().sum(), inputs)[0]
    with fast_input_gradients():
        return torch.autograd.grad(model(inputs).square().sum(), inputs)[0]


def test_lenet_gradient_unchanged(lenet, small_batch):
    inputs, labels = small_batch
    inputs = inputs.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(F.cross_entropy(lenet(inputs), labels, reduction="sum"), inputs)
    with fast_input_gradients():
        (fast,) = torch.autograd.grad(F.cross_entropy(lenet(inputs), labels, reduction="sum"), inputs)
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
    with fast_input_gradients():
        fast = torch.autograd.grad(layer(inputs).square().sum(), [inputs, layer.weight, layer.bias])
    for got, want in zip(fast, expected):
        assert torch.allclose(got, want, atol=1e-5)


def test_model_left_unchanged(lenet):
    before = {name: value.clone() for name, value in lenet.state_dict().items()}
    input_gradient(lenet, torch.rand(2, 1, 28, 28), True)
    after = lenet.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_rewrite_used_only_where_it_fits():
    from mlwarden.attacks._fast_conv import _InputGradientConvolution

    torch.manual_seed(0)
    for layer, rewritten in [(nn.Conv2d(1, 4, 3, padding=1), True), (nn.Conv2d(1, 4, 3, stride=2), False)]:
        inputs = torch.rand(2, 1, 8, 8, requires_grad=True)
        with fast_input_gradients():
            output = layer(inputs)
        assert (output.grad_fn.name() == _InputGradientConvolution.__name__ + "Backward") == rewritten


def test_no_rewrite_without_input_gradient(lenet):
    with torch.no_grad(), fast_input_gradients():
        output = lenet(torch.rand(2, 1, 28, 28))
    assert output.grad_fn is None

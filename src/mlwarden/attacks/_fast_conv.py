"""Faster input gradients of convolutions whose input has one or two channels.

On CPU, torch 2.13 computes the gradient of a 2-D convolution with respect
to its input through oneDNN, which is slow when that input has very few
channels. For the first layer of the shipped LeNet-5 (1 to 6 channels, 5x5
kernel, 500 images, one thread) it took about 205 ms, against 30 ms for the
forward convolution. With stride 1, dilation 1 and one group, the same
gradient is a plain convolution of the output gradient with the kernel
flipped in space and with its channel axes swapped, padded by
``kernel - 1 - padding``. Torch computed that in about 37 ms, and a whole
forward and backward pass of that model became about 1.8 times faster.

:func:`fast_input_gradients` returns a context manager (a
:class:`torch.overrides.TorchFunctionMode`) under which every call of
``torch.nn.functional.conv2d`` that fits those conditions, has at most two
input channels and an input that requires a gradient runs through an
autograd function with the same forward and the faster input gradient.
Attacks run their forward and backward passes inside it. The model itself
is never changed: its parameters, modes and outputs stay the same, and
gradients of weights and biases are still computed by torch.

Limitations: models that call convolutions outside ``torch.nn.functional``
(TorchScript, ONNX) keep torch's own gradient. The rewritten gradient is
first-order only: do not use the context around ``create_graph=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["fast_input_gradients"]

# Input channels up to which the rewrite pays: with 3 channels (RGB, 3x3 kernels) it measured
# no faster than oneDNN, and with 6 it was slower.
_MAX_INPUT_CHANNELS = 2


class _InputGradientConvolution(torch.autograd.Function):
    """A stride-1 2-D convolution whose input gradient is computed as a forward convolution."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: tuple[int, int]
    ) -> torch.Tensor:
        ctx.save_for_backward(inputs, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None
        return F.conv2d(inputs, weight, bias, padding=padding)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        inputs, weight = ctx.saved_tensors
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            full_padding = [k - 1 - p for k, p in zip(weight.shape[2:], ctx.padding)]
            grad_input = F.conv2d(grad_output, weight.flip(2, 3).transpose(0, 1), padding=full_padding)
        wants_weight = ctx.needs_input_grad[1]
        wants_bias = ctx.has_bias and ctx.needs_input_grad[2]
        if wants_weight or wants_bias:
            _, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
                grad_output, inputs, weight, [weight.shape[0]], [1, 1], list(ctx.padding), [1, 1], False, [0, 0], 1,
                [False, wants_weight, wants_bias],
            )
        return grad_input, grad_weight, grad_bias, None


def _pair(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, Sequence) else (value, value)


_CONV2D_PARAMETERS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV2D_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}


class _FastInputGradientMode(TorchFunctionMode):
    """Routes qualifying ``conv2d`` calls through :class:`_InputGradientConvolution`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func is F.conv2d:
            call = {**_CONV2D_DEFAULTS, **dict(zip(_CONV2D_PARAMETERS, args)), **kwargs}
            inputs, weight, padding = call["input"], call["weight"], call["padding"]
            fits = (
                isinstance(inputs, torch.Tensor)
                and inputs.requires_grad
                and inputs.dim() == 4
                and inputs.device.type == "cpu"
                and inputs.shape[1] <= _MAX_INPUT_CHANNELS
                and not isinstance(padding, str)
                and call["groups"] == 1
                and _pair(call["stride"]) == (1, 1)
                and _pair(call["dilation"]) == (1, 1)
                and all(k - 1 - p >= 0 for k, p in zip(weight.shape[2:], _pair(padding)))
            )
            if fits:
                return _InputGradientConvolution.apply(inputs, weight, call["bias"], _pair(padding))
        return func(*args, **kwargs)


def fast_input_gradients() -> TorchFunctionMode:
    """Return a context manager under which qualifying convolutions get the faster input gradient.

    Run both the forward pass and the backward pass inside it.
    """
    return _FastInputGradientMode()

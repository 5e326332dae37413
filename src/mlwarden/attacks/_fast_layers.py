"""Faster CPU kernels for two layers of small image classifiers, used while attacks run.

Attacks spend nearly all their time in the model's forward and backward
passes, and on CPU (torch 2.13, oneDNN) two common layers of small image
classifiers are far slower than the arithmetic they do. Measured on the
shipped LeNet-5 with 500 images and one thread:

- the gradient of a 2-D convolution with respect to an input of one channel
  (its first layer, 1 to 6 channels, 5x5) took about 205 ms, against 30 ms
  for the forward convolution. With stride 1, dilation 1 and one group, that
  gradient is a plain convolution of the output gradient with the kernel
  flipped in space and with its channel axes swapped, padded by
  ``kernel - 1 - padding``, which took about 37 ms;
- 2x2 max pooling with stride 2 took about 35 ms on its 6x28x28 maps, against
  under 2 ms for the element-wise maximum of the four strided corners.

:func:`fast_layers` returns a :class:`torch.overrides.TorchFunctionMode`
under which calls of ``torch.nn.functional.conv2d`` and
``torch.nn.functional.max_pool2d`` that fit those cases run through
autograd functions with the same results and the same gradients. A
convolution is rewritten only when its input has at most two channels and
requires a gradient. A pooled value that ties within its window sends its
gradient to the first maximum in row-major order, as ``max_pool2d`` does. In
one measurement (500 images, one thread, on a loaded machine, so only
roughly), a forward and backward pass of the shipped LeNet-5 took 193 ms
instead of 270 ms, and a forward pass 35 ms instead of 78 ms. The model
itself is never changed. Outside the mode nothing is different.

Limitations: models that call these layers outside ``torch.nn.functional``
(TorchScript, ONNX) keep torch's own kernels. The rewritten gradients are
first-order only: do not use the mode around ``create_graph=True``. With NaN
inputs the pooling gradient may go to another element than torch's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["fast_layers"]

# Input channels up to which the convolution rewrite pays: with 3 channels (RGB, 3x3 kernels)
# it measured no faster than oneDNN, and with 6 it was slower.
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


def _corners(inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Return the four strided corners of the 2x2 windows, in row-major order; an odd last row or column is dropped."""
    height, width = inputs.shape[-2] // 2 * 2, inputs.shape[-1] // 2 * 2
    return (
        inputs[..., 0:height:2, 0:width:2],
        inputs[..., 0:height:2, 1:width:2],
        inputs[..., 1:height:2, 0:width:2],
        inputs[..., 1:height:2, 1:width:2],
    )


class _MaxPool2x2(torch.autograd.Function):
    """2x2 max pooling with stride 2, as the element-wise maximum of the four window corners.

    When a gradient is needed, the forward pass also records which corner
    held each maximum, as the flat indices that torch's own pooling
    backward takes, so the backward pass is torch's.
    """

    @staticmethod
    def forward(ctx: Any, inputs: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        top_left, top_right, bottom_left, bottom_right = _corners(inputs)
        output = torch.maximum(torch.maximum(top_left, top_right), torch.maximum(bottom_left, bottom_right))
        if ctx.needs_input_grad[0]:
            width = inputs.shape[-1]
            rows = torch.arange(output.shape[-2]) * (2 * width)
            window = rows[:, None] + torch.arange(output.shape[-1]) * 2
            # Like max_pool2d, the first maximum of each window in row-major order takes the gradient.
            offset = torch.where(
                top_left == output,
                0,
                torch.where(top_right == output, 1, torch.where(bottom_left == output, width, width + 1)),
            )
            ctx.save_for_backward(inputs, window + offset)
        return output

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        inputs, indices = ctx.saved_tensors
        return torch.ops.aten.max_pool2d_with_indices_backward(
            grad_output, inputs, [2, 2], [2, 2], [0, 0], [1, 1], False, indices
        )


def _pair(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, Sequence) else (value, value)


_CONV2D_PARAMETERS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV2D_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
_POOL_PARAMETERS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_POOL_DEFAULTS = {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False}


def _rewrite_conv2d(call: dict[str, Any]) -> torch.Tensor | None:
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
    return _InputGradientConvolution.apply(inputs, weight, call["bias"], _pair(padding)) if fits else None


def _rewrite_max_pool2d(call: dict[str, Any]) -> torch.Tensor | None:
    inputs = call["input"]
    stride = call["stride"]
    fits = (
        isinstance(inputs, torch.Tensor)
        and inputs.dim() in (3, 4)
        and inputs.device.type == "cpu"
        and inputs.is_floating_point()
        and _pair(call["kernel_size"]) == (2, 2)
        and (stride is None or (isinstance(stride, Sequence) and len(stride) == 0) or _pair(stride) == (2, 2))
        and _pair(call["padding"]) == (0, 0)
        and _pair(call["dilation"]) == (1, 1)
        and not call["ceil_mode"]
        and not call["return_indices"]
        and inputs.shape[-2] >= 2
        and inputs.shape[-1] >= 2
    )
    return _MaxPool2x2.apply(inputs) if fits else None


class _FastLayerMode(TorchFunctionMode):
    """Routes qualifying ``conv2d`` and ``max_pool2d`` calls through the faster autograd functions."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        result = None
        if func is F.conv2d:
            result = _rewrite_conv2d({**_CONV2D_DEFAULTS, **dict(zip(_CONV2D_PARAMETERS, args)), **kwargs})
        elif func is F.max_pool2d:
            result = _rewrite_max_pool2d({**_POOL_DEFAULTS, **dict(zip(_POOL_PARAMETERS, args)), **kwargs})
        return func(*args, **kwargs) if result is None else result


def fast_layers() -> TorchFunctionMode:
    """Return a context manager under which qualifying layers run on the faster kernels.

    Run both the forward pass and any backward pass inside it.
    """
    return _FastLayerMode()

"""Faster CPU kernels for two layers of small image classifiers, used while attacks run.

Attacks spend nearly all their time in the model's forward and backward
passes, and on CPU (torch 2.13, oneDNN) two common layers of small image
classifiers can be far slower than the arithmetic they do:

- the gradient of a 2-D convolution with respect to an input of one or two
  channels (LeNet-5's first layer, 1 to 6 channels, 5x5). With stride 1,
  dilation 1 and one group, that gradient is a plain convolution of the
  output gradient with the kernel flipped in space and with its channel
  axes swapped, padded by ``kernel - 1 - padding``. oneDNN runs that
  convolution much faster than torch's own gradient, which goes through a
  transposed convolution: on 500 images and 2 threads of one Xeon
  (Sapphire Rapids) 6.3 ms against 22 ms, and from 1 to 500 images always
  at least 1.6 times faster. With three channels the two measured the same,
  so wider inputs keep torch's gradient. The weight and bias keep torch's
  own gradients.
- 2x2 max pooling with stride 2, as the element-wise maximum of the four
  strided corners: 1.1 ms against 7.6 ms for torch's on the 6x28x28 maps of
  500 images without a gradient, and 6.7 ms against 9.2 ms with one. How
  much it gains depends on the processor (on one AMD EPYC the two were
  close with a gradient), so the mode times both once per kind of input
  and keeps the faster.

:func:`fast_layers` returns a :class:`torch.overrides.TorchFunctionMode`
under which calls of ``torch.nn.functional.conv2d`` and
``torch.nn.functional.max_pool2d`` that fit those cases run through
autograd functions with the same results and gradients (the convolution
gradient to float rounding, the pooling to the bit). A convolution is
rewritten only when its input has at most two channels and requires a
gradient. A pooled value that ties within its window sends its gradient to
the first maximum in row-major order, as ``max_pool2d`` does. The
convolution kernel is fixed rather than chosen by timing, so two runs of an
attack compute the same gradients to the bit. The model itself is never
changed. Outside the mode nothing is different.

Limitations: models that call these layers outside ``torch.nn.functional``
(TorchScript, ONNX) keep torch's own kernels. The rewritten gradients are
first-order only: do not use the mode around ``create_graph=True``. With NaN
inputs the pooling gradient may go to another element than torch's.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["fast_layers"]

logger = logging.getLogger(__name__)

# Input channels up to which the convolution rewrite pays: with 3 channels (RGB, 3x3 kernels)
# it measured the same as torch's own gradient.
_MAX_INPUT_CHANNELS = 2


class _InputGradientConvolution(torch.autograd.Function):
    """Gives a convolution computed by torch a faster gradient with respect to its input.

    ``forward`` takes the output of ``conv2d(inputs.detach(), weight, bias)``
    and returns it unchanged, so the weight and bias keep torch's own
    gradients, which autograd computes only when they are asked for. The
    input gradient is the stride-1 convolution of the output gradient with
    the kernel flipped in space and with its channel axes swapped, padded by
    ``kernel - 1 - padding``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, output: torch.Tensor, inputs: torch.Tensor, weight: torch.Tensor, padding: tuple[int, int]
    ) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.padding = padding
        # Marked as changed in place, the output takes this function as its history without
        # becoming a view, so a later in-place layer (ReLU(inplace=True)) still works.
        ctx.mark_dirty(output)
        return output

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        grad_input = None
        if ctx.needs_input_grad[1]:
            full_padding = [k - 1 - p for k, p in zip(weight.shape[2:], ctx.padding)]
            kernel = weight.flip(2, 3).transpose(0, 1)
            grad_input = F.conv2d(grad_output, kernel, padding=full_padding)
        return grad_output, grad_input, None, None


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
        top, bottom = torch.maximum(top_left, top_right), torch.maximum(bottom_left, bottom_right)
        output = torch.maximum(top, bottom)
        if ctx.needs_input_grad[0]:
            width = inputs.shape[-1]
            rows = torch.arange(output.shape[-2]) * (2 * width)
            window = rows[:, None] + torch.arange(output.shape[-1]) * 2
            # Like max_pool2d, the first maximum of each window in row-major order takes the gradient:
            # a tie keeps the left corner and the top row.
            offset = torch.where(
                bottom > top, (bottom_right > bottom_left) + width, (top_right > top_left).to(torch.int64)
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
        and inputs.is_floating_point()
    )
    if not fits:
        return None
    output = F.conv2d(inputs.detach(), weight, call["bias"], padding=_pair(padding))
    return _InputGradientConvolution.apply(output, inputs, weight.detach(), _pair(padding))


def _seconds(run: Any, repeats: int = 3) -> float:
    """Return the best time of ``repeats`` calls of ``run``, after one call to warm up."""
    run()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


# Whether the corner maximum beat torch's pooling, per (gradient or not, shape without the batch,
# batch size rounded to a power of two, dtype, threads). Both give the same bits, so the choice
# changes only the time.
_POOL_CHOICES: dict[tuple[Any, ...], bool] = {}


def _corners_pay(inputs: torch.Tensor, gradient: bool) -> bool:
    """Time both poolings once on inputs of this kind; True when the corner maximum was faster."""
    key = (gradient, tuple(inputs.shape[1:]), inputs.shape[0].bit_length(), inputs.dtype, torch.get_num_threads())
    choice = _POOL_CHOICES.get(key)
    if choice is None:
        sample = inputs.detach().clone().requires_grad_(gradient)

        def timed(pool: Any) -> float:
            def run() -> None:
                with torch.set_grad_enabled(gradient):
                    output = pool(sample)
                    if gradient:
                        torch.autograd.grad(output.sum(), sample)

            return _seconds(run)

        choice = timed(_MaxPool2x2.apply) < timed(lambda x: F.max_pool2d(x, 2))
        _POOL_CHOICES[key] = choice
        logger.debug("2x2 pooling of %s, gradient %s: corner maximum faster: %s", tuple(inputs.shape), gradient, choice)
    return choice


def _rewrite_max_pool2d(call: dict[str, Any], always: bool) -> torch.Tensor | None:
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
    if not fits:
        return None
    gradient = torch.is_grad_enabled() and inputs.requires_grad
    return _MaxPool2x2.apply(inputs) if always or _corners_pay(inputs, gradient) else None


class _FastLayerMode(TorchFunctionMode):
    """Routes qualifying ``conv2d`` and ``max_pool2d`` calls through the faster autograd functions."""

    def __init__(self, always: bool) -> None:
        super().__init__()
        self.always = always

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        result = None
        if func is F.conv2d:
            result = _rewrite_conv2d({**_CONV2D_DEFAULTS, **dict(zip(_CONV2D_PARAMETERS, args)), **kwargs})
        elif func is F.max_pool2d:
            result = _rewrite_max_pool2d({**_POOL_DEFAULTS, **dict(zip(_POOL_PARAMETERS, args)), **kwargs}, self.always)
        return func(*args, **kwargs) if result is None else result


def fast_layers(*, always: bool = False) -> TorchFunctionMode:
    """Return a context manager under which qualifying layers run on the faster kernels.

    Run both the forward pass and any backward pass inside it. The
    convolution gradient is used wherever it fits. By default the pooling is
    used only where it timed faster than torch's on this machine, measured
    once per kind of input, and ``always=True`` uses it wherever it fits,
    as the tests do.
    """
    return _FastLayerMode(always)

"""ONNX models run with ONNX Runtime, as query models, and export of PyTorch models to ONNX.

An ONNX file is what many deployments serve, and what a black-box assessment
should target: :class:`OnnxQueryModel` runs it with ONNX Runtime on the CPU,
counts queries and enforces a budget like every
:class:`~mlwarden.models.query.QueryModel`. ONNX Runtime computes no input
gradients, so only black-box and transfer attacks can run on it; a
white-box attack raises :class:`~mlwarden.errors.ModelError` naming the
combination.

Limitations: the model must take one float32 input (N, ...) in pixel space
(normalization belongs inside the graph, as in every mlwarden model) and
return its class scores as the first output. The file is loaded with
ONNX Runtime's default checks only; run ``mlwarden``'s integrity checks on
files from untrusted sources first.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ModelError
from .query import QueryModel

__all__ = ["OnnxQueryModel", "export_onnx"]

logger = logging.getLogger(__name__)


class OnnxQueryModel(QueryModel):
    """An ONNX classifier run with ONNX Runtime, seen through queries only.

    Parameters
    ----------
    path : str or Path
        The ``.onnx`` file.
    output : {"logits", "probabilities", "labels"}, default "logits"
        What the model's first output holds.
    labels_only, budget, num_classes
        See :class:`~mlwarden.models.query.QueryModel`.
    bounds : (low, high), default (0.0, 1.0)
        Range of the input values.
    threads : int, optional
        Threads ONNX Runtime uses within an operator; default: PyTorch's
        thread count, so both runtimes share the machine alike.

    Raises
    ------
    ModelError
        The file is missing, ONNX Runtime cannot load it, or it has more
        than one input.

    Examples
    --------
    >>> import tempfile, torch
    >>> from mlwarden.models import load_pretrained
    >>> lenet, _ = load_pretrained("lenet5")
    >>> path = export_onnx(lenet, tempfile.mkdtemp() + "/lenet.onnx", (1, 28, 28))  # doctest: +SKIP
    >>> OnnxQueryModel(path, budget=1000).predict_labels(torch.rand(4, 1, 28, 28)).shape  # doctest: +SKIP
    torch.Size([4])
    """

    def __init__(
        self,
        path: str | Path,
        *,
        output: str = "logits",
        labels_only: bool = False,
        budget: int | None = None,
        bounds: Sequence[float] = (0.0, 1.0),
        num_classes: int | None = None,
        threads: int | None = None,
    ) -> None:
        super().__init__(output=output, labels_only=labels_only, budget=budget, bounds=bounds, num_classes=num_classes)
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"ONNX model file not found: {self.path}", value=str(self.path))
        self.threads = threads
        self._session = self._open_session()
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            names = ", ".join(item.name for item in inputs)
            raise ModelError(
                f"{self.path} has {len(inputs)} inputs ({names}); mlwarden runs models with one image input",
                value=len(inputs),
            )
        self._input_name = inputs[0].name
        first_dimension = inputs[0].shape[0] if inputs[0].shape else None
        # A graph exported with a fixed batch size must be fed in chunks of that size.
        self._fixed_batch = first_dimension if isinstance(first_dimension, int) and first_dimension > 0 else None
        output_shape = self._session.get_outputs()[0].shape
        if self.num_classes is None and self.output != "labels" and len(output_shape) == 2:
            if isinstance(output_shape[1], int):
                self.num_classes = output_shape[1]

    def _open_session(self) -> Any:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads if self.threads is not None else torch.get_num_threads()
        options.log_severity_level = 3
        try:
            return onnxruntime.InferenceSession(str(self.path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types for unreadable models
            raise ModelError(f"ONNX Runtime cannot load {self.path}: {error}", value=str(self.path)) from None

    # An ONNX Runtime session cannot be pickled: worker processes reopen the file instead.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_session"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._session = self._open_session()

    def describe(self) -> str:
        return f"ONNX model {self.path.name}"

    def _predict(self, inputs: torch.Tensor) -> np.ndarray:
        array = inputs.to(torch.float32).cpu().numpy()
        if self._fixed_batch is None:
            return self._session.run(None, {self._input_name: array})[0]
        size = self._fixed_batch
        outputs = []
        for start in range(0, array.shape[0], size):
            chunk = array[start : start + size]
            missing = size - chunk.shape[0]
            if missing:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], missing, axis=0)])
            outputs.append(self._session.run(None, {self._input_name: chunk})[0][: size - missing])
        return np.concatenate(outputs)


def export_onnx(model: nn.Module, path: str | Path, input_shape: Sequence[int]) -> Path:
    """Export a PyTorch classifier to ONNX with a dynamic batch dimension.

    Parameters
    ----------
    model : nn.Module
        Classifier on pixel-space inputs; its normalization layer is part of
        the exported graph. It is exported in eval mode; its own mode is
        restored afterwards.
    path : str or Path
        Destination ``.onnx`` file.
    input_shape : sequence of int
        Shape of one input without the batch dimension, such as (1, 28, 28).

    Returns
    -------
    Path
        ``path``.

    Notes
    -----
    Uses the ``torch.export``-based exporter of PyTorch (2.9 and later), which
    needs the ``onnxscript`` package.
    """
    path = Path(path)
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    example = torch.rand(2, *input_shape)
    batch = torch.export.Dim("batch", min=1)
    parameter = next(iter(_forward_parameters(model)), "inputs")
    try:
        with warnings.catch_warnings():
            # PyTorch's exporter triggers deprecation warnings inside its own pytree code.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=["inputs"],
                output_names=["logits"],
                dynamic_shapes={parameter: {0: batch}},
                dynamo=True,
                verbose=False,
            )
    finally:
        for module, training in modes:
            module.training = training
    logger.info("exported %s to %s", type(model).__name__, path)
    return path


def _forward_parameters(model: nn.Module) -> list[str]:
    return [name for name in inspect.signature(model.forward).parameters if name != "self"]

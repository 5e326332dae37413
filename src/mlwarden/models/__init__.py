"""The model zoo, weight files with sidecars, training, and loading of users' models."""

from .layers import Normalize
from .lenet import LeNet5
from .loading import LoadedModel, check_model_output, resolve_model
from .onnx_runtime import OnnxQueryModel, export_onnx
from .query import CallableQueryModel, ModuleQueryModel, QueryModel, as_query_model
from .training import TrainingConfig, evaluate_accuracy, train_model
from .weights import load_weights, read_sidecar, save_weights
from .zoo import ARCHITECTURES, PRETRAINED, build, load_from_weights, load_pretrained

__all__ = [
    "ARCHITECTURES",
    "PRETRAINED",
    "CallableQueryModel",
    "ModuleQueryModel",
    "OnnxQueryModel",
    "QueryModel",
    "as_query_model",
    "export_onnx",
    "LeNet5",
    "LoadedModel",
    "Normalize",
    "TrainingConfig",
    "build",
    "check_model_output",
    "evaluate_accuracy",
    "load_from_weights",
    "load_pretrained",
    "load_weights",
    "read_sidecar",
    "resolve_model",
    "save_weights",
    "train_model",
]

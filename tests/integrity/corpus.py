"""A corpus of malicious and benign model files, built on the spot, for the scanner tests and benchmark.

Every malicious payload is harmless: if it ever ran, it would only create the
file ``sentinel`` (through ``os.system("touch ...")``, ``exec``,
``subprocess.call`` and the like), so a test can prove that scanning ran
nothing by checking that the sentinel does not exist. Nothing here loads a
malicious file.

Each malicious file reproduces a way of hiding a payload that has fooled a
published scanner: memo indirection into ``STACK_GLOBAL``, names assembled at
load time, nested deserializers, protocol-0 ``INST``/``OBJ``, calls whose
result is discarded with ``POP``, and payloads inside PyTorch zip and legacy
archives, joblib files and NumPy object arrays. The benign files are real
checkpoints: the shipped LeNet-5 weights as a state dict (zip and legacy
formats, and with an optimizer state), the safetensors file itself,
scikit-learn models saved by joblib, NumPy record arrays and an ONNX model with
external data.

This module is imported by ``tests/integrity`` and by ``bench/scan_compare.py``.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CorpusFile", "build_corpus", "Payload"]

MALICIOUS = "malicious"
BENIGN = "benign"
UNSCANNABLE = "unscannable"


@dataclass(frozen=True)
class CorpusFile:
    """One corpus file: its path, its category and the trick it uses."""

    name: str
    path: Path
    category: str
    trick: str

    @property
    def malicious(self) -> bool:
        return self.category == MALICIOUS


class Payload:
    """An object whose unpickling calls ``func(*args)``; the corpus uses it with harmless arguments."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


# --- a tiny pickle assembler for the payloads pickle.dumps cannot write --------------------


def _unicode(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) < 256:
        return b"\x8c" + bytes([len(data)]) + data  # SHORT_BINUNICODE
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def _bytes(data: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(data)) + data  # BINBYTES


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"  # GLOBAL


PROTO4 = b"\x80\x04"
MEMOIZE = b"\x94"
STACK_GLOBAL = b"\x93"
TUPLE1 = b"\x85"
TUPLE2 = b"\x86"
REDUCE = b"R"
POP = b"0"
STOP = b"."
EMPTY_DICT = b"}"
EMPTY_TUPLE = b")"
SETITEM = b"s"


def _binget(index: int) -> bytes:
    return b"h" + bytes([index])


def _call_pickle(module: str, name: str, *arguments: bytes) -> bytes:
    """Return a protocol-4 pickle that calls ``module.name(*arguments)`` (one or two) and keeps the result."""
    tuple_opcode = TUPLE1 if len(arguments) == 1 else TUPLE2
    return PROTO4 + _unicode(module) + _unicode(name) + STACK_GLOBAL + b"".join(arguments) + tuple_opcode + REDUCE + STOP


def _memo_indirection(command: str) -> bytes:
    # 'os' and 'system' go into the memo first and are attached to an allowed OrderedDict;
    # the last string constants before the final STACK_GLOBAL are 'collections' and
    # 'OrderedDict', which is what a scanner reading only the preceding strings sees.
    return (
        PROTO4
        + _unicode("os") + MEMOIZE  # memo 0
        + _unicode("system") + MEMOIZE  # memo 1
        + _unicode("collections") + MEMOIZE  # memo 2
        + _unicode("OrderedDict") + MEMOIZE  # memo 3
        + STACK_GLOBAL + MEMOIZE  # memo 4: collections.OrderedDict
        + EMPTY_TUPLE + REDUCE + MEMOIZE  # memo 5: an OrderedDict
        + _binget(0) + _binget(1) + SETITEM  # od["os"] = "system"
        + POP + POP + POP  # drop the dict and the two names
        + _binget(0) + _binget(1) + STACK_GLOBAL  # os.system, fetched back through the memo
        + _unicode(command) + TUPLE1 + REDUCE
        + POP  # discard the call's result
        + EMPTY_DICT + STOP
    )


def _runtime_names(command: str) -> bytes:
    # _codecs.encode("bf", "rot13") returns the str "os" at load time, so the
    # STACK_GLOBAL operands are call results, not string constants.
    def encoded(text: str) -> bytes:
        rot13 = text.translate(str.maketrans("abcdefghijklmnopqrstuvwxyz", "nopqrstuvwxyzabcdefghijklm"))
        return _unicode("_codecs") + _unicode("encode") + STACK_GLOBAL + _unicode(rot13) + _unicode("rot13") + TUPLE2 + REDUCE

    return PROTO4 + encoded("os") + encoded("system") + STACK_GLOBAL + _unicode(command) + TUPLE1 + REDUCE + STOP


def _pop_discarded(command: str) -> bytes:
    # The call's result is thrown away; the pickle's value is an innocent empty dict.
    return b"\x80\x02" + _global("os", "system") + _unicode(command) + TUPLE1 + REDUCE + POP + EMPTY_DICT + STOP


def _protocol0_inst(command: str) -> bytes:
    return b"(S'" + command.encode() + b"'\nios\nsystem\n."


def _protocol0_obj(command: str) -> bytes:
    return b"(cos\nsystem\nS'" + command.encode() + b"'\no."


# --- benign real checkpoints ---------------------------------------------------------------


def _lenet_state_dict() -> dict[str, Any]:
    import mlwarden.models
    from safetensors.torch import load_file

    weights = Path(mlwarden.models.__file__).parent / "weights" / "lenet5-fashion-mnist.safetensors"
    return load_file(weights)


def _lenet_weights_path() -> Path:
    import mlwarden.models

    return Path(mlwarden.models.__file__).parent / "weights" / "lenet5-fashion-mnist.safetensors"


def _sklearn_models() -> tuple[Any, Any]:
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, labels = load_iris(return_X_y=True)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(features, labels)
    forest = RandomForestClassifier(n_estimators=3, max_depth=3, random_state=np.random.RandomState(0))
    return pipeline, forest.fit(features, labels)


def _record_array() -> np.recarray:
    return np.rec.array(
        [(1, 2.5, b"ab"), (3, 4.5, b"cd")], dtype=[("id", "<i4"), ("score", "<f8"), ("tag", "S2")]
    )


def _onnx_with_external_data(folder: Path, state_dict: dict[str, Any]) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = state_dict["classifier.weight"].numpy() if "classifier.weight" in state_dict else np.ones((10, 84), np.float32)
    bias = np.zeros(weight.shape[0], np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["features", "weight", "bias"], ["logits"], transB=1)],
        "lenet_head",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, weight.shape[1]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, weight.shape[0]])],
        [numpy_helper.from_array(weight.astype(np.float32), "weight"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "onnx_external_data.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="onnx_external_data.bin", size_threshold=0)
    return path


def _onnx_escaping(folder: Path, location: str, name: str) -> Path:
    import onnx
    from onnx import TensorProto, helper

    tensor = TensorProto(name="weight", data_type=TensorProto.FLOAT, dims=[4])
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Identity", ["weight"], ["out"])],
        "exfiltrate",
        [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4])],
        [tensor],
    )
    path = folder / name
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _safetensors_bad_offsets(folder: Path) -> Path:
    header = json.dumps({"weight": {"dtype": "F32", "shape": [1024, 1024], "data_offsets": [0, 4194304]}}).encode()
    path = folder / "safetensors_out_of_range.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 16)
    return path


def _safetensors_overlap(folder: Path) -> Path:
    header = json.dumps(
        {
            "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
            "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
        }
    ).encode()
    path = folder / "safetensors_overlap.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 24)
    return path


# --- the corpus ----------------------------------------------------------------------------


def build_corpus(folder: str | os.PathLike[str], sentinel: str | os.PathLike[str]) -> list[CorpusFile]:
    """Write every corpus file into ``folder`` and return their descriptions.

    Parameters
    ----------
    folder : path-like
        An empty folder to fill.
    sentinel : path-like
        The file that a payload would create if anything ever ran it.
    """
    import joblib
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    touch = f"touch {sentinel}"
    write_sentinel = f"open({str(sentinel)!r}, 'w').close()"
    files: list[CorpusFile] = []

    def add(name: str, data: bytes | None, category: str, trick: str) -> Path:
        path = folder / name
        if data is not None:
            path.write_bytes(data)
        files.append(CorpusFile(name, path, category, trick))
        return path

    state_dict = _lenet_state_dict()
    pipeline, forest = _sklearn_models()

    # Malicious pickles.
    add("reduce_os_system.pkl", pickle.dumps(Payload(os.system, touch), protocol=2), MALICIOUS, "__reduce__ calling os.system (protocol 2, GLOBAL)")
    add("reduce_exec_protocol4.pkl", pickle.dumps(Payload(exec, write_sentinel), protocol=4), MALICIOUS, "__reduce__ calling builtins.exec (protocol 4, STACK_GLOBAL)")
    add("reduce_eval_protocol0.pkl", pickle.dumps(Payload(eval, write_sentinel), protocol=0), MALICIOUS, "__reduce__ calling builtins.eval in protocol 0")
    add("reduce_subprocess.pkl", pickle.dumps(Payload(subprocess.call, ["touch", str(sentinel)]), protocol=3), MALICIOUS, "__reduce__ calling subprocess.call")
    add("runpy_run_code.pkl", _call_pickle("runpy", "_run_code", _unicode(write_sentinel), EMPTY_DICT), MALICIOUS, "runpy._run_code with source text")
    add("webbrowser_open.pkl", _call_pickle("webbrowser", "open", _unicode(f"file://{sentinel}")), MALICIOUS, "webbrowser.open")
    add("protocol0_inst.pkl", _protocol0_inst(touch), MALICIOUS, "protocol-0 INST calling os.system")
    add("protocol0_obj.pkl", _protocol0_obj(touch), MALICIOUS, "protocol-0 OBJ calling os.system")
    add("memo_indirection.pkl", _memo_indirection(touch), MALICIOUS, "os.system fetched through the memo after names were attached to an allowed OrderedDict")
    add("runtime_names.pkl", _runtime_names(touch), MALICIOUS, "STACK_GLOBAL names assembled at load time with _codecs.encode(..., 'rot13')")
    add("pop_discarded.pkl", _pop_discarded(touch), MALICIOUS, "os.system call whose result is discarded with POP")
    inner = pickle.dumps(Payload(os.system, touch), protocol=2)
    add("nested_pickle_loads.pkl", pickle.dumps(Payload(pickle.loads, inner), protocol=4), MALICIOUS, "pickle.loads of an embedded second pickle")
    add("nested_dill_loads.pkl", _call_pickle("dill", "loads", _bytes(inner)), MALICIOUS, "dill.loads of an embedded second pickle")
    second = add("second_stage.bin", inner, MALICIOUS, "a plain os.system pickle, loaded by the joblib and pandas stagers")
    add("nested_joblib_load.pkl", _call_pickle("joblib", "load", _unicode(str(second))), MALICIOUS, "joblib.load of a second file")
    add("nested_pandas_read_pickle.pkl", _call_pickle("pandas", "read_pickle", _unicode(str(second))), MALICIOUS, "pandas.read_pickle of a second file")

    # Malicious model archives.
    torch.save({"state_dict": state_dict, "hook": Payload(os.system, touch)}, folder / "torch_zip_payload.pt")
    add("torch_zip_payload.pt", None, MALICIOUS, "payload in data.pkl of a torch.save zip archive")
    torch.save({"state_dict": state_dict, "hook": Payload(os.system, touch)}, folder / "torch_legacy_payload.pt", _use_new_zipfile_serialization=False)
    add("torch_legacy_payload.pt", None, MALICIOUS, "payload in the legacy (non-zip) torch.save format")
    joblib.dump({"model": pipeline, "hook": Payload(os.system, touch)}, folder / "joblib_payload.joblib")
    add("joblib_payload.joblib", None, MALICIOUS, "payload next to a scikit-learn model in a joblib file")
    joblib.dump({"model": pipeline, "hook": Payload(os.system, touch)}, folder / "joblib_payload_zlib.joblib", compress=3)
    add("joblib_payload_zlib.joblib", None, MALICIOUS, "payload in a zlib-compressed joblib file")
    buffer = io.BytesIO()
    np.save(buffer, np.array([Payload(os.system, touch)], dtype=object), allow_pickle=True)
    add("numpy_object_payload.npy", buffer.getvalue(), MALICIOUS, "payload in a NumPy object array")
    _safetensors_bad_offsets(folder)
    add("safetensors_out_of_range.safetensors", None, MALICIOUS, "safetensors offsets past the end of the file")
    _safetensors_overlap(folder)
    add("safetensors_overlap.safetensors", None, MALICIOUS, "safetensors tensors that overlap")
    _onnx_escaping(folder, "../../../../etc/passwd", "onnx_parent_escape.onnx")
    add("onnx_parent_escape.onnx", None, MALICIOUS, "ONNX external data climbing out with '..'")
    _onnx_escaping(folder, "/etc/passwd", "onnx_absolute_path.onnx")
    add("onnx_absolute_path.onnx", None, MALICIOUS, "ONNX external data at an absolute path")
    (folder / "linked.bin").symlink_to("/etc/hostname")
    _onnx_escaping(folder, "linked.bin", "onnx_symlink_escape.onnx")
    add("onnx_symlink_escape.onnx", None, MALICIOUS, "ONNX external data through a symbolic link out of the folder")

    # A file that is not a model at all, with a model extension.
    add("not_a_pickle.pt", b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 42\n", UNSCANNABLE, "a Git LFS pointer named .pt")

    # Benign real checkpoints.
    torch.save(state_dict, folder / "lenet_state_dict.pt")
    add("lenet_state_dict.pt", None, BENIGN, "LeNet-5 state dict, torch.save zip")
    torch.save(state_dict, folder / "lenet_state_dict_legacy.pt", _use_new_zipfile_serialization=False)
    add("lenet_state_dict_legacy.pt", None, BENIGN, "LeNet-5 state dict, legacy torch.save format")
    parameters = [tensor.clone().requires_grad_(True) for tensor in state_dict.values() if tensor.is_floating_point()]
    optimizer = torch.optim.Adam(parameters, lr=1e-3)
    sum(parameter.sum() for parameter in parameters).backward()
    optimizer.step()
    torch.save({"model": state_dict, "optimizer": optimizer.state_dict(), "epoch": 15}, folder / "lenet_checkpoint.pt")
    add("lenet_checkpoint.pt", None, BENIGN, "LeNet-5 training checkpoint with Adam state")
    add("lenet.safetensors", _lenet_weights_path().read_bytes(), BENIGN, "the shipped LeNet-5 safetensors weights")
    joblib.dump(pipeline, folder / "sklearn_pipeline.joblib")
    add("sklearn_pipeline.joblib", None, BENIGN, "scikit-learn scaler + logistic regression, joblib")
    joblib.dump(forest, folder / "sklearn_forest_gzip.joblib", compress=("gzip", 3))
    add("sklearn_forest_gzip.joblib", None, BENIGN, "scikit-learn random forest with a RandomState, gzip joblib")
    joblib.dump({"model": pipeline, "labels": np.array(["a", None, 3], dtype=object)}, folder / "sklearn_objects_xz.joblib", compress=("xz", 3))
    add("sklearn_objects_xz.joblib", None, BENIGN, "scikit-learn model and an object array, xz joblib")
    add("numpy_recarray_protocol2.pkl", pickle.dumps(_record_array(), protocol=2), BENIGN, "NumPy record array, pickle protocol 2")
    add("numpy_recarray_protocol5.pkl", pickle.dumps(_record_array(), protocol=5), BENIGN, "NumPy record array, pickle protocol 5")
    joblib.dump(_record_array(), folder / "numpy_recarray.joblib")
    add("numpy_recarray.joblib", None, BENIGN, "NumPy record array, joblib")
    _onnx_with_external_data(folder, state_dict)
    add("onnx_external_data.onnx", None, BENIGN, "ONNX model with external data inside its folder")
    return files

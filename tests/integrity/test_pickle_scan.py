"""The pickle walker on hand-made streams: each kind of fault that scanners have shipped, and its allow-list."""

from __future__ import annotations

import collections
import fractions
import os
import pickle
import struct

import numpy as np
import pytest

from mlwarden.integrity import Allowlist, FindingKind, Severity, scan_file, scan_pickle_bytes

from .corpus import (
    EMPTY_DICT,
    MEMOIZE,
    POP,
    PROTO4,
    REDUCE,
    STACK_GLOBAL,
    STOP,
    TUPLE1,
    Payload,
    _binget,
    _bytes,
    _call_pickle,
    _global,
    _memo_indirection,
    _pop_discarded,
    _protocol0_inst,
    _protocol0_obj,
    _runtime_names,
    _unicode,
)


def kinds(data: bytes, allowlist: Allowlist | None = None) -> set[FindingKind]:
    return {finding.kind for finding in scan_pickle_bytes(data, allowlist=allowlist).findings}


def test_memo_indirection_resolved() -> None:
    result = scan_pickle_bytes(_memo_indirection("true"))
    stack_globals = [(g.qualified_name, g.allowed) for g in result.globals if g.opcode == "STACK_GLOBAL"]
    assert stack_globals == [("collections.OrderedDict", True), ("os.system", False)]
    assert result.flagged


def test_memo_put_and_get_variants() -> None:
    # PUT/GET (protocol 0 text) and LONG_BINPUT/LONG_BINGET carry the names instead of MEMOIZE/BINGET.
    data = (
        PROTO4
        + _unicode("os") + b"p7\n" + _unicode("system") + b"r" + struct.pack("<I", 300)
        + POP + POP
        + b"g7\n" + b"j" + struct.pack("<I", 300) + STACK_GLOBAL
        + _unicode("true") + TUPLE1 + REDUCE + STOP
    )
    assert scan_pickle_bytes(data).unlisted_globals() == ["os.system"]


def test_runtime_names_unresolved() -> None:
    found = kinds(_runtime_names("true"))
    assert FindingKind.UNRESOLVED_GLOBAL in found
    assert FindingKind.UNEXPECTED_ARGUMENTS in found


def test_codecs_encode_latin1_allowed() -> None:
    # Protocol 2 pickles store bytes as _codecs.encode(text, "latin1").
    result = scan_pickle_bytes(pickle.dumps(b"\x00\xffweights", protocol=2))
    assert [g.qualified_name for g in result.globals] == ["_codecs.encode"]
    assert not result.flagged


@pytest.mark.parametrize("loader", ["pickle.loads", "_pickle.loads", "dill.loads", "cloudpickle.loads"])
def test_nested_pickle_scanned(loader: str) -> None:
    inner = pickle.dumps(Payload(os.system, "true"), protocol=2)
    module, name = loader.rsplit(".", 1)
    result = scan_pickle_bytes(_call_pickle(module, name, _bytes(inner)))
    assert FindingKind.NESTED_PAYLOAD in {finding.kind for finding in result.findings}
    assert result.unlisted_globals() == [loader, "posix.system"]
    nested = [g for g in result.globals if g.qualified_name == "posix.system"]
    assert ">" in nested[0].location


def test_nested_pickle_in_protocol2_bytes() -> None:
    inner = pickle.dumps(Payload(os.system, "true"), protocol=2)
    result = scan_pickle_bytes(pickle.dumps(Payload(pickle.loads, inner), protocol=2))
    assert "posix.system" in result.unlisted_globals()


@pytest.mark.parametrize("loader", ["joblib.load", "pandas.read_pickle", "numpy.load", "torch.load"])
def test_nested_file_loader_flagged(loader: str) -> None:
    module, name = loader.rsplit(".", 1)
    result = scan_pickle_bytes(_call_pickle(module, name, _unicode("stage2.pkl")))
    critical = [f for f in result.findings if f.severity is Severity.CRITICAL]
    assert any(f.kind is FindingKind.NESTED_PAYLOAD and "stage2.pkl" in f.message for f in critical)


def test_nesting_depth_limited() -> None:
    data = pickle.dumps(Payload(os.system, "true"), protocol=2)
    for _ in range(12):
        data = pickle.dumps(Payload(pickle.loads, data), protocol=4)
    result = scan_pickle_bytes(data)
    assert result.flagged
    assert any("nested more than" in finding.message for finding in result.findings)


def test_protocol0_inst_and_obj() -> None:
    for data in (_protocol0_inst("true"), _protocol0_obj("true")):
        result = scan_pickle_bytes(data)
        assert result.unlisted_globals() == ["os.system"]
        assert result.globals[0].opcode in ("INST", "GLOBAL")


def test_python2_names_mapped() -> None:
    # Protocols 0-2 map __builtin__ to builtins, as the unpickler's fix_imports does.
    result = scan_pickle_bytes(b"c__builtin__\neval\n(S'1'\ntR.")
    assert result.unlisted_globals() == ["builtins.eval"]
    assert result.findings[0].severity is Severity.CRITICAL


def test_pop_discarded_call_flagged() -> None:
    result = scan_pickle_bytes(_pop_discarded("true"))
    assert result.unlisted_globals() == ["os.system"]


def test_unlisted_harmless_global_high() -> None:
    result = scan_pickle_bytes(pickle.dumps(fractions.Fraction(1, 3)))
    assert [f.kind for f in result.findings] == [FindingKind.UNLISTED_GLOBAL]
    assert result.findings[0].severity is Severity.HIGH


def test_allowlist_extension() -> None:
    data = pickle.dumps(fractions.Fraction(1, 3))
    allow = Allowlist.default().with_names(["fractions.Fraction"])
    assert not scan_pickle_bytes(data, allowlist=allow).flagged


def test_computed_call_flagged() -> None:
    # REDUCE on the result of another call: OrderedDict()(...).
    data = PROTO4 + _unicode("collections") + _unicode("OrderedDict") + STACK_GLOBAL + b")" + REDUCE + b")" + REDUCE + STOP
    assert FindingKind.COMPUTED_CALL in kinds(data)


def test_build_on_global_flagged() -> None:
    data = b"\x80\x02" + _global("collections", "OrderedDict") + EMPTY_DICT + b"b" + STOP
    assert FindingKind.COMPUTED_CALL in kinds(data)


@pytest.mark.parametrize("opcode", [b"\x82\x01", b"\x83\x01\x00", b"\x84\x01\x00\x00\x00"])
def test_extension_opcodes_flagged(opcode: bytes) -> None:
    assert FindingKind.EXTENSION_CODE in kinds(b"\x80\x02" + opcode + b")R.")


def test_stack_global_on_non_strings_flagged() -> None:
    data = PROTO4 + b"K\x01K\x02" + STACK_GLOBAL + STOP
    assert FindingKind.UNRESOLVED_GLOBAL in kinds(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80\x04\x95",
        b"\x80\x02c__builtin__\neval",
        b"\x80\x02(t0.0.",
        b"\x80\x02h\x05.",
        b"\xff\xfe garbage",
    ],
    ids=["empty", "truncated-frame", "truncated-global", "pop-underflow", "unknown-memo", "garbage"],
)
def test_malformed_pickle_reported(data: bytes) -> None:
    result = scan_pickle_bytes(data)
    assert result.flagged
    assert FindingKind.MALFORMED in {finding.kind for finding in result.findings}


def test_huge_length_does_not_allocate() -> None:
    # BINBYTES8 claiming 2**60 bytes must end in a short read, not a MemoryError.
    data = b"\x80\x05\x8e" + struct.pack("<Q", 2**60) + b"tiny"
    assert FindingKind.MALFORMED in kinds(data)


def test_record_arrays_not_flagged() -> None:
    records = np.rec.array([(1, 2.0, b"ab")], dtype=[("a", "<i4"), ("b", "<f8"), ("c", "S2")])
    structured = np.zeros(3, dtype=[("x", "<f4", (2,)), ("y", "<i8")])
    for value in (records, structured, np.float64(1.5), np.arange(4).reshape(2, 2)):
        for protocol in (2, 4, 5):
            result = scan_pickle_bytes(pickle.dumps(value, protocol=protocol))
            assert not result.flagged, (value, protocol, result.unlisted_globals())


def test_containers_not_flagged() -> None:
    value = {"counts": collections.Counter("abca"), "order": collections.OrderedDict(a=1), "set": {1, 2}, "bytes": b"x"}
    for protocol in range(0, 6):
        assert not scan_pickle_bytes(pickle.dumps(value, protocol=protocol)).flagged, protocol


def test_sklearn_rule_needs_class_defined_in_module() -> None:
    allow = Allowlist.default()
    assert allow.allows("sklearn.linear_model._logistic", "LogisticRegression")
    assert allow.allows("sklearn.tree._tree", "Tree")  # a Cython class, found in the .pyx source
    assert not allow.allows("sklearn.ensemble._bagging", "partial")  # imported from functools
    assert not allow.allows("sklearn.base", "clone")  # a function, not a class
    assert not allow.allows("sklearn.linear_model._logistic", "LogisticRegression.__init__")
    assert not Allowlist.strict().allows("sklearn.linear_model._logistic", "LogisticRegression")


def test_trailing_pickles_walked(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "two.pkl"
    path.write_bytes(pickle.dumps({"a": 1}) + pickle.dumps(Payload(os.system, "true")))
    assert scan_file(path).unlisted_globals() == ["posix.system"]


def test_trailing_garbage_noted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "tail.pkl"
    path.write_bytes(pickle.dumps({"a": 1}) + b"\xff\xff not a pickle")
    result = scan_file(path)
    assert not result.flagged
    assert [f.severity for f in result.findings] == [Severity.INFO]


def test_scan_stream_leaves_file_open(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mlwarden.integrity import scan_stream

    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    with path.open("rb") as stream:
        assert not scan_stream(stream, path=path).flagged
        stream.seek(0)
        assert pickle.load(stream) == {"w": [1.0, 2.0]}

"""Which globals a pickle may import: the allow-list, and the names known to be dangerous.

The scanner decides with the allow-list alone: a global outside it flags the
file, whatever its name. The list of dangerous names only raises the severity
of such a finding to ``critical`` and explains it, so a payload that uses a
name missing from that list (``numpy.testing._private.utils.runstring``,
``torch.hub.load``) is still flagged.

The default allow-list holds what real checkpoints need:

- PyTorch tensors, parameters, storages, dtypes and layouts, as
  ``torch.load(weights_only=True)`` accepts them (PyTorch 2.x);
- NumPy arrays, scalars, dtypes, record arrays and random-generator states;
- containers from ``builtins`` and ``collections``, ``copyreg._reconstructor``
  and ``_codecs.encode`` (only as ``encode(str, "latin1")``, the way protocol 2
  stores ``bytes``);
- joblib's ``NumpyArrayWrapper``;
- classes *defined* (not merely imported) in scikit-learn's own source files,
  found by parsing the ``.py``/``.pyx`` file without importing it.

Limitations: allowing a class trusts its constructor and ``__setstate__``. The
scikit-learn rule trusts every class scikit-learn defines outside its tests and
vendored ``externals``; use :meth:`Allowlist.strict` for tensor-only files.
"""

from __future__ import annotations

import _compat_pickle
import ast
import functools
import importlib.util
import keyword
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Allowlist",
    "TENSOR_GLOBALS",
    "NUMPY_GLOBALS",
    "CONTAINER_GLOBALS",
    "NESTED_DESERIALIZERS",
    "is_dangerous",
    "map_python2_name",
]

_TORCH_DTYPES = (
    "float64 float32 float16 bfloat16 complex128 complex64 complex32 int64 int32 int16 int8 uint8 "
    "uint16 uint32 uint64 bool qint8 qint32 quint8 quint4x2 quint2x4 float8_e5m2 float8_e4m3fn "
    "float8_e5m2fnuz float8_e4m3fnuz float8_e8m0fnu float4_e2m1fn_x2 bits1x8 bits2x4 bits4x2 bits8 "
    "bits16 int1 int2 int3 int4 int5 int6 int7 uint1 uint2 uint3 uint4 uint5 uint6 uint7"
).split()
_TORCH_STORAGES = (
    "Double Float Half BFloat16 Long Int Short Char Byte Bool ComplexFloat ComplexDouble "
    "QInt8 QUInt8 QInt32 QUInt4x2 QUInt2x4"
).split()
_TORCH_TENSOR_TYPES = "Double Float Half BFloat16 Long Int Short Char Byte Bool".split()
_TORCH_REBUILD_FUNCTIONS = (
    "_rebuild_tensor _rebuild_tensor_v2 _rebuild_tensor_v3 _rebuild_parameter "
    "_rebuild_parameter_with_state _rebuild_qtensor _rebuild_sparse_tensor _rebuild_nested_tensor "
    "_rebuild_meta_tensor_no_storage _rebuild_wrapper_subclass _rebuild_device_tensor_from_numpy "
    "_rebuild_device_tensor_from_cpu_tensor"
).split()
_TORCH_ENUMS = (
    "strided sparse_coo sparse_csr sparse_csc sparse_bsr sparse_bsc _mkldnn jagged "
    "contiguous_format channels_last channels_last_3d preserve_format "
    "per_tensor_affine per_tensor_symmetric per_channel_affine per_channel_symmetric "
    "per_channel_affine_float_qparams"
).split()

TENSOR_GLOBALS: frozenset[str] = frozenset(
    [f"torch._utils.{name}" for name in _TORCH_REBUILD_FUNCTIONS]
    + [f"torch.{name}" for name in _TORCH_DTYPES + _TORCH_ENUMS]
    + [f"torch.{kind}Storage" for kind in _TORCH_STORAGES]
    + [f"torch.cuda.{kind}Storage" for kind in _TORCH_STORAGES]
    + [f"torch.{kind}Tensor" for kind in _TORCH_TENSOR_TYPES]
    + [
        "torch.storage.UntypedStorage",
        "torch.storage.TypedStorage",
        "torch.Size",
        "torch.Tensor",
        "torch.device",
        "torch.nn.parameter.Parameter",
        "torch.serialization._get_layout",
        "torch._tensor._rebuild_from_type_v2",
    ]
)
"""PyTorch names that rebuild tensors, parameters and storages from a ``torch.save`` file."""

_NUMPY_SCALARS = (
    "bool_ bool int8 int16 int32 int64 uint8 uint16 uint32 uint64 intc uintc intp uintp "
    "float16 float32 float64 longdouble complex64 complex128 clongdouble str_ bytes_ void "
    "object_ datetime64 timedelta64"
).split()

NUMPY_GLOBALS: frozenset[str] = frozenset(
    [
        f"{core}.multiarray.{name}"
        for core in ("numpy.core", "numpy._core")
        for name in ("_reconstruct", "scalar")
    ]
    + [f"{core}.numeric._frombuffer" for core in ("numpy.core", "numpy._core")]
    + [f"numpy.{name}" for name in ("ndarray", "dtype", "record", "recarray", "memmap")]
    + [f"numpy.{name}" for name in _NUMPY_SCALARS]
    + [
        "numpy.rec.recarray",
        "numpy.core.records.recarray",
        "numpy._core.records.recarray",
        "numpy.core.records.record",
        "numpy._core.records.record",
        "numpy.ma.core.MaskedArray",
        "numpy.ma.core._mareconstruct",
        "numpy.random._pickle.__randomstate_ctor",
        "numpy.random._pickle.__bit_generator_ctor",
        "numpy.random._pickle.__generator_ctor",
        "numpy.random.mtrand.RandomState",
        "numpy.random._generator.Generator",
        "numpy.random._mt19937.MT19937",
        "numpy.random._pcg64.PCG64",
        "numpy.random._pcg64.PCG64DXSM",
        "numpy.random._philox.Philox",
        "numpy.random._sfc64.SFC64",
        "joblib.numpy_pickle.NumpyArrayWrapper",
    ]
)
"""NumPy names that rebuild arrays, scalars, dtypes and random states, plus joblib's array wrapper."""

CONTAINER_GLOBALS: frozenset[str] = frozenset(
    [
        f"builtins.{name}"
        for name in (
            "object set frozenset bytearray complex slice range list dict tuple int float str bytes bool"
        ).split()
    ]
    + [
        "collections.OrderedDict",
        "collections.Counter",
        "collections.defaultdict",
        "collections.deque",
        "copyreg._reconstructor",
        "_codecs.encode",
    ]
)
"""Standard-library containers and the helpers that pickle itself emits for them."""

NESTED_DESERIALIZERS: frozenset[str] = frozenset(
    [
        "pickle.loads",
        "pickle.load",
        "pickle._loads",
        "pickle._load",
        "pickle.Unpickler",
        "_pickle.loads",
        "_pickle.load",
        "_pickle.Unpickler",
        "dill.loads",
        "dill.load",
        "dill._dill.loads",
        "dill._dill.load",
        "cloudpickle.loads",
        "cloudpickle.load",
        "joblib.load",
        "joblib.numpy_pickle.load",
        "pandas.read_pickle",
        "pandas.io.pickle.read_pickle",
        "numpy.load",
        "numpy.lib.npyio.load",
        "numpy.lib._npyio_impl.load",
        "torch.load",
        "torch.serialization.load",
        "marshal.loads",
        "marshal.load",
        "shelve.open",
    ]
)
"""Callables that deserialize a second payload: a pickle that calls one hides what it loads."""

# Modules in which every name is treated as dangerous: process control, code
# loading, network and file access, and deserializers of further payloads.
_DANGEROUS_MODULES = frozenset(
    """os posix nt subprocess sys runpy webbrowser socket shutil importlib pickle _pickle cPickle
    dill cloudpickle marshal code codeop pty ctypes _ctypes multiprocessing asyncio pdb bdb timeit
    platform commands popen2 requests urllib urllib2 http httplib ftplib smtplib telnetlib
    xmlrpc shelve tempfile pathlib io _io _posixsubprocess signal threading _thread imp
    zipimport pkgutil site sysconfig distutils setuptools pip operator functools types inspect
    gc builtins __builtin__ torch.hub torch.jit torch._dynamo torch._inductor torch.utils.cpp_extension
    torch.ops torch.classes numpy.testing numpy.f2py numpy.distutils""".split()
)


def map_python2_name(module: str, name: str) -> tuple[str, str]:
    """Map a Python 2 import (``__builtin__.eval``) to the Python 3 name that pickle resolves it to.

    The unpickler applies this mapping to pickles of protocol 0 to 2 (its
    ``fix_imports`` default), so ``__builtin__ eval`` runs ``builtins.eval``.
    """
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def is_dangerous(module: str, name: str) -> bool:
    """Return whether ``module.name`` is a known way to run code, touch files or load another payload.

    Used only to rank findings; whether a global is accepted is decided by the
    allow-list.
    """
    if f"{module}.{name}" in NESTED_DESERIALIZERS:
        return True
    parts = module.split(".")
    return any(".".join(parts[:length]) in _DANGEROUS_MODULES for length in range(1, len(parts) + 1))


def _check_codecs_encode(args: Any) -> str | None:
    # Protocol 2 stores bytes as encode(text, "latin1"); any other codec (such
    # as "rot13", which returns str) could assemble names at load time.
    if isinstance(args, tuple) and len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
        return None
    return "only encode(text, 'latin1') is allowed, the form protocol 2 uses to store bytes"


_ARGUMENT_CHECKS: dict[str, Callable[[Any], str | None]] = {"_codecs.encode": _check_codecs_encode}


@dataclass(frozen=True)
class Allowlist:
    """The globals that a pickle may import, and the packages whose own classes it may use.

    Parameters
    ----------
    names : frozenset of str
        Exact ``module.qualname`` strings, matched as written (``torch._utils._rebuild_tensor_v2``).
    packages : tuple of str
        Top-level packages (``"sklearn"``) whose modules may be imported for
        classes that the module's source file itself defines. The source is
        parsed, never imported; tests and vendored ``externals`` are excluded.
    modules : frozenset of str
        Top-level module names whose every name is allowed. Used for
        ``__torch__``, the namespace of classes compiled from a TorchScript
        archive's own code, which no Python import can reach.

    Examples
    --------
    >>> allow = Allowlist.default().with_names(["mypackage.layers.Block"])
    >>> allow.allows("torch._utils", "_rebuild_tensor_v2"), allow.allows("posix", "system")
    (True, False)
    """

    names: frozenset[str] = field(default_factory=frozenset)
    packages: tuple[str, ...] = ()
    modules: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def default(cls) -> Allowlist:
        """Return the allow-list for PyTorch, NumPy, joblib and scikit-learn files."""
        return cls(TENSOR_GLOBALS | NUMPY_GLOBALS | CONTAINER_GLOBALS, ("sklearn",))

    @classmethod
    def strict(cls) -> Allowlist:
        """Return the allow-list for tensors and arrays only, without scikit-learn classes."""
        return cls(TENSOR_GLOBALS | NUMPY_GLOBALS | CONTAINER_GLOBALS, ())

    def with_names(self, names: Iterable[str]) -> Allowlist:
        """Return a copy that also allows ``names`` (exact ``module.qualname`` strings)."""
        return Allowlist(self.names | frozenset(names), self.packages, self.modules)

    def with_modules(self, modules: Iterable[str]) -> Allowlist:
        """Return a copy that also allows every name of the top-level ``modules``."""
        return Allowlist(self.names, self.packages, self.modules | frozenset(modules))

    def allows(self, module: str, name: str) -> bool:
        """Return whether importing ``name`` from ``module`` is allowed."""
        if f"{module}.{name}" in self.names:
            return True
        top = module.split(".", 1)[0]
        if top in self.modules:
            return True
        return top in self.packages and _is_class_defined_in_source(module, name)

    def check_arguments(self, module: str, name: str, args: Any) -> str | None:
        """Return why a call of an allowed global with ``args`` is rejected, or None if it is accepted.

        ``args`` is the scanner's model of the argument tuple; most globals
        accept any arguments.
        """
        check = _ARGUMENT_CHECKS.get(f"{module}.{name}")
        return None if check is None else check(args)


_EXCLUDED_PARTS = frozenset({"tests", "externals", "_testing", "conftest"})
_PYX_CLASS = re.compile(r"^(?:cdef\s+(?:public\s+)?)?class\s+([A-Za-z_]\w*)", re.MULTILINE)


def _is_class_defined_in_source(module: str, name: str) -> bool:
    parts = module.split(".")
    if not name.isidentifier() or keyword.iskeyword(name):
        return False
    if not all(part.isidentifier() for part in parts) or _EXCLUDED_PARTS & set(parts):
        return False
    return name in _classes_defined_in(module)


@functools.lru_cache(maxsize=512)
def _classes_defined_in(module: str) -> frozenset[str]:
    """Return the top-level classes that ``module``'s source file defines, without importing it."""
    parts = module.split(".")
    # find_spec of a top-level name locates the package without running its __init__.
    spec = importlib.util.find_spec(parts[0])
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    for root in spec.submodule_search_locations:
        base = Path(root).joinpath(*parts[1:])
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                tree = ast.parse(candidate.read_text(encoding="utf-8"))
                return frozenset(node.name for node in tree.body if isinstance(node, ast.ClassDef))
        for candidate in (base.with_suffix(".pyx"), base.with_suffix(".pxd")):
            if candidate.is_file():
                return frozenset(_PYX_CLASS.findall(candidate.read_text(encoding="utf-8")))
    return frozenset()

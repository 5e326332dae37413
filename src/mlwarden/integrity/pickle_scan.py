"""Static analysis of pickle streams: every import and call, found without unpickling.

The walker reads opcodes with :func:`pickletools.genops` and replays the
unpickler's stack, metastack and memo on *models* of the values (strings,
numbers, tuples, imported globals, call results), never on real objects. So it
knows the real operands of ``STACK_GLOBAL`` even when they come back through
the memo, sees every call (``REDUCE``, ``NEWOBJ``, ``INST``, ``OBJ``) whether or
not its result is kept, and resolves Python 2 names (``__builtin__``) as the
unpickler does. Nothing from the file is imported or executed.

It treats these as reasons to flag a file:

- a global outside the :class:`~mlwarden.integrity.allowlist.Allowlist`
  (``critical`` when it is a known way to run code or load another payload);
- a ``STACK_GLOBAL`` whose module or name is not a string constant of the
  stream, for example a string produced by a call at load time;
- a call of anything but an imported global, and ``BUILD`` on an imported
  global (which would change it for the whole process);
- ``EXT1``/``EXT2``/``EXT4``, which import through copyreg's extension registry;
- a second payload handed to a deserializer (``pickle.loads``, ``joblib.load``
  and the like), whose own imports are scanned when they are embedded bytes;
- bytes that do not parse as a pickle.

joblib files are pickles with raw array data after each ``NumpyArrayWrapper``;
the walker skips that data (or walks the nested pickle of an object array) the
way joblib's unpickler reads it.

Reference: the pickle virtual machine as implemented in CPython's
``Lib/pickle.py`` (``_Unpickler``) and documented in ``Lib/pickletools.py``.

Limitations: the allow-list trusts the constructors and ``__setstate__`` of the
classes it accepts; the walker does not model what they do with their
arguments.
"""

from __future__ import annotations

import io
import logging
import pickletools
import re
import struct
from dataclasses import dataclass, field
from typing import Any

from .allowlist import NESTED_DESERIALIZERS, Allowlist, is_dangerous, map_python2_name
from .findings import Finding, FindingKind, ImportedGlobal, ScanResult, Severity
from ._streams import BoundedReader

__all__ = ["walk_pickle", "scan_pickle_bytes", "PickleWalk", "MAX_NESTING"]

logger = logging.getLogger(__name__)

MAX_NESTING = 8
"""How deep nested payloads (a pickle that loads a pickle) are followed before the file is flagged."""

# Deserializers whose embedded ``bytes`` argument is itself a pickle that can be walked.
_PICKLE_LOADERS = frozenset(
    name for name in NESTED_DESERIALIZERS if name.rsplit(".", 1)[1] in ("loads", "_loads")
) - {"marshal.loads"}


@dataclass(frozen=True)
class PickleWalk:
    """How the walk of one pickle ended.

    Attributes
    ----------
    complete : bool
        Whether the pickle ended with ``STOP``; False adds a ``malformed`` finding.
    constant : int, float, str, bytes or None
        The unpickled value when it is a plain constant (the legacy ``torch.save``
        format starts with a pickled magic number), else None.
    """

    complete: bool
    constant: int | float | str | bytes | None = None


class _Malformed(Exception):
    """The stream stopped following the pickle format at a known position."""


class _Mark:
    def __repr__(self) -> str:
        return "MARK"


@dataclass(eq=False)
class _Global:
    """A value produced by ``GLOBAL``, ``STACK_GLOBAL``, ``INST`` or ``EXT*``."""

    module: str
    name: str
    resolved: bool = True

    @property
    def qualified_name(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(eq=False)
class _Call:
    """The result of calling ``func`` with ``args``; ``state`` is set by ``BUILD``."""

    func: Any
    args: Any
    state: Any = None


@dataclass(eq=False)
class _Dict:
    items: list[tuple[Any, Any]] = field(default_factory=list)

    def get(self, key: str) -> Any:
        for item_key, value in reversed(self.items):
            if item_key == key:
                return value
        return None

    def has(self, key: str) -> bool:
        return any(item_key == key for item_key, _ in self.items)


@dataclass(eq=False)
class _Opaque:
    """A value the walker does not model (a persistent id, an out-of-band buffer, a joblib array)."""

    description: str


def scan_pickle_bytes(data: bytes, *, allowlist: Allowlist | None = None, location: str = "") -> ScanResult:
    """Scan every pickle in ``data`` (several may follow each other) and return the result.

    Parameters
    ----------
    data : bytes
        One or more pickles back to back.
    allowlist : Allowlist, optional
        The globals to accept; :meth:`Allowlist.default` when omitted.
    location : str, default ""
        A prefix for the locations in findings.

    Returns
    -------
    ScanResult
        With ``format="pickle"`` and ``path="<bytes>"``.
    """
    result = ScanResult(path="<bytes>", format="pickle")
    reader = BoundedReader(io.BytesIO(data))
    allowlist = allowlist or Allowlist.default()
    if not data:
        result.findings.append(Finding(FindingKind.MALFORMED, Severity.HIGH, "no bytes: an empty input is not a pickle", location))
        return result
    index = 0
    while not reader.at_eof():
        if not walk_pickle(reader, result, allowlist=allowlist, location=f"{location}pickle {index}").complete:
            break
        index += 1
    return result


def walk_pickle(
    stream: BoundedReader,
    result: ScanResult,
    *,
    allowlist: Allowlist,
    location: str,
    depth: int = 0,
) -> PickleWalk:
    """Walk one pickle from ``stream`` up to its ``STOP`` opcode, adding imports and findings to ``result``.

    Parameters
    ----------
    stream : BoundedReader
        Positioned at the first opcode; left right after ``STOP`` (or where parsing failed).
    result : ScanResult
        Receives the imports and findings.
    allowlist : Allowlist
        The globals to accept.
    location : str
        Where this pickle sits in the file, used in findings (``archive/data.pkl``).
    depth : int, default 0
        How many deserializers deep this pickle is nested.

    Returns
    -------
    PickleWalk
        Whether the pickle was complete, and its value when that is a constant.
    """
    walker = _Walker(stream, result, allowlist, location, depth)
    try:
        value = walker.run()
    except _Malformed as error:
        result.findings.append(
            Finding(
                FindingKind.MALFORMED,
                Severity.HIGH,
                f"not a valid pickle: {error}; a file that cannot be parsed cannot be shown to be safe",
                location,
            )
        )
        return PickleWalk(complete=False)
    constant = value if isinstance(value, (int, float, str, bytes)) and not isinstance(value, bool) else None
    return PickleWalk(complete=True, constant=constant)


class _Walker:
    """Replays one pickle's opcodes on models of its values."""

    def __init__(self, stream: BoundedReader, result: ScanResult, allowlist: Allowlist, location: str, depth: int):
        self.stream = stream
        self.result = result
        self.allowlist = allowlist
        self.location = location
        self.depth = depth
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.proto = 0
        self.position = 0

    # --- plumbing -----------------------------------------------------------------

    def where(self) -> str:
        return f"{self.location}, byte {self.position}" if self.location else f"byte {self.position}"

    def add(self, kind: FindingKind, severity: Severity, message: str) -> None:
        self.result.findings.append(Finding(kind, severity, message, self.where()))

    def pop(self) -> Any:
        if not self.stack:
            raise _Malformed(f"stack underflow at byte {self.position}")
        return self.stack.pop()

    def top(self) -> Any:
        if not self.stack:
            raise _Malformed(f"stack underflow at byte {self.position}")
        return self.stack[-1]

    def pop_mark(self) -> list[Any]:
        if not self.metastack:
            raise _Malformed(f"no MARK to pop at byte {self.position}")
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def run(self) -> Any:
        """Walk up to ``STOP`` and return the modelled value it pops."""
        try:
            for opcode, arg, position in pickletools.genops(self.stream):  # type: ignore[arg-type]  # it needs only read, readline and tell
                self.position = position if position is not None else self.stream.tell()
                if opcode.name == "STOP":
                    return self.pop()
                handler = getattr(self, f"op_{opcode.name}", None)
                if handler is None:
                    raise _Malformed(f"opcode {opcode.name} is not supported at byte {self.position}")
                handler(arg)
        except (ValueError, EOFError, OverflowError, struct.error, IndexError, KeyError, TypeError) as error:
            raise _Malformed(str(error) or type(error).__name__) from None
        raise _Malformed(f"the stream ended at byte {self.stream.tell()} before STOP")

    # --- imports ------------------------------------------------------------------

    def record_global(self, module: str, name: str, opcode: str) -> _Global:
        if self.proto < 3:
            module, name = map_python2_name(module, name)
        allowed = self.allowlist.allows(module, name)
        dangerous = is_dangerous(module, name)
        self.result.globals.append(ImportedGlobal(module, name, opcode, self.where(), allowed, dangerous))
        if not allowed:
            if dangerous:
                self.add(
                    FindingKind.DANGEROUS_GLOBAL,
                    Severity.CRITICAL,
                    f"{opcode} imports {module}.{name}, a known way to run code, touch files or load another payload",
                )
            else:
                self.add(
                    FindingKind.UNLISTED_GLOBAL,
                    Severity.HIGH,
                    f"{opcode} imports {module}.{name}, which is not on the allow-list",
                )
        return _Global(module, name)

    def op_GLOBAL(self, arg: str) -> None:
        module, name = _split_pair(arg)
        self.stack.append(self.record_global(module, name, "GLOBAL"))

    def op_STACK_GLOBAL(self, arg: None) -> None:
        name = self.pop()
        module = self.pop()
        if type(module) is str and type(name) is str:
            self.stack.append(self.record_global(module, name, "STACK_GLOBAL"))
            return
        self.add(
            FindingKind.UNRESOLVED_GLOBAL,
            Severity.HIGH,
            f"STACK_GLOBAL takes its module and name from {_describe(module)} and {_describe(name)}, "
            "not from string constants, so what it imports is only known at load time",
        )
        self.stack.append(_Global("<unresolved>", "<unresolved>", resolved=False))

    def op_INST(self, arg: str) -> None:
        module, name = _split_pair(arg)
        cls = self.record_global(module, name, "INST")
        args = tuple(self.pop_mark())
        instance = self.call(cls, args, "INST")
        self.stack.append(instance)

    def _ext(self, code: int) -> None:
        self.add(
            FindingKind.EXTENSION_CODE,
            Severity.HIGH,
            f"an EXT opcode imports extension code {code} from copyreg's registry, "
            "which depends on the loading process and cannot be checked",
        )
        self.stack.append(_Global("<extension>", str(code), resolved=False))

    op_EXT1 = op_EXT2 = op_EXT4 = _ext

    # --- calls --------------------------------------------------------------------

    def call(self, func: Any, args: Any, opcode: str) -> _Call:
        if isinstance(func, _Global):
            if func.resolved and self.allowlist.allows(func.module, func.name):
                reason = self.allowlist.check_arguments(func.module, func.name, args)
                if reason:
                    self.add(
                        FindingKind.UNEXPECTED_ARGUMENTS,
                        Severity.HIGH,
                        f"{opcode} calls {func.qualified_name} with {_describe(args)}: {reason}",
                    )
            if func.qualified_name in NESTED_DESERIALIZERS:
                self.nested_payload(func, args, opcode)
        else:
            self.add(
                FindingKind.COMPUTED_CALL,
                Severity.HIGH,
                f"{opcode} calls {_describe(func)} rather than an imported global, "
                "so the callable is only known at load time",
            )
        return _Call(func, args)

    def nested_payload(self, func: _Global, args: Any, opcode: str) -> None:
        first = args[0] if isinstance(args, tuple) and args else None
        payload = _as_bytes(first)
        if payload is not None and func.qualified_name in _PICKLE_LOADERS:
            inner = f"{self.where()} > {func.qualified_name}"
            self.add(
                FindingKind.NESTED_PAYLOAD,
                Severity.CRITICAL,
                f"{opcode} passes an embedded {len(payload)}-byte pickle to {func.qualified_name}; "
                f"its own imports are reported at '{inner}'",
            )
            if self.depth + 1 >= MAX_NESTING:
                self.add(
                    FindingKind.MALFORMED,
                    Severity.HIGH,
                    f"payloads are nested more than {MAX_NESTING} deep; the innermost were not scanned",
                )
                return
            walk_pickle(
                BoundedReader(io.BytesIO(payload)),
                self.result,
                allowlist=self.allowlist,
                location=inner,
                depth=self.depth + 1,
            )
            return
        what = f"the file {first!r}" if isinstance(first, str) else _describe(first)
        self.add(
            FindingKind.NESTED_PAYLOAD,
            Severity.CRITICAL,
            f"{opcode} hands {what} to {func.qualified_name}, which deserializes a second payload "
            "that this scan cannot see",
        )

    def op_REDUCE(self, arg: None) -> None:
        args = self.pop()
        func = self.pop()
        self.stack.append(self.call(func, args, "REDUCE"))

    def op_NEWOBJ(self, arg: None) -> None:
        args = self.pop()
        cls = self.pop()
        self.stack.append(self.call(cls, args, "NEWOBJ"))

    def op_NEWOBJ_EX(self, arg: None) -> None:
        kwargs = self.pop()
        args = self.pop()
        cls = self.pop()
        self.stack.append(self.call(cls, (args, kwargs), "NEWOBJ_EX"))

    def op_OBJ(self, arg: None) -> None:
        items = self.pop_mark()
        if not items:
            raise _Malformed(f"OBJ without a class at byte {self.position}")
        instance = self.call(items[0], tuple(items[1:]), "OBJ")
        self.stack.append(instance)

    def op_BUILD(self, arg: None) -> None:
        state = self.pop()
        target = self.top()
        if isinstance(target, _Global):
            self.add(
                FindingKind.COMPUTED_CALL,
                Severity.HIGH,
                f"BUILD sets the state of the imported global {target.qualified_name} itself, "
                "which changes it for the whole process",
            )
            return
        if isinstance(target, _Call):
            target.state = state
            if _is_joblib_array_wrapper(target):
                self.stack[-1] = self.read_joblib_array(state)

    # --- joblib arrays ------------------------------------------------------------

    def read_joblib_array(self, state: Any) -> _Opaque:
        """Consume the array data that joblib writes right after a ``NumpyArrayWrapper``."""
        if not isinstance(state, _Dict):
            raise _Malformed(f"joblib array wrapper without a state dict at byte {self.position}")
        layout = _dtype_layout(state.get("dtype"))
        shape = state.get("shape")
        if layout is None or not isinstance(shape, tuple) or not all(_is_size(n) for n in shape):
            raise _Malformed(f"joblib array with a dtype or shape that cannot be sized at byte {self.position}")
        itemsize, has_object = layout
        if has_object:
            # joblib pickles object arrays as a separate pickle in the same stream.
            inner = f"{self.where()} > object array"
            if not walk_pickle(self.stream, self.result, allowlist=self.allowlist, location=inner, depth=self.depth).complete:
                raise _Malformed(f"joblib object array at byte {self.position} is not a complete pickle")
            return _Opaque("joblib object array")
        if state.has("numpy_array_alignment_bytes") and state.get("numpy_array_alignment_bytes") is not None:
            padding = self.stream.read(1)
            if len(padding) != 1 or self.stream.skip(padding[0]) != padding[0]:
                raise _Malformed(f"joblib array padding is truncated at byte {self.stream.tell()}")
        count = 1
        for size in shape:
            count *= size
        if self.stream.skip(count * itemsize) != count * itemsize:
            raise _Malformed(f"joblib array data ends before its {count * itemsize} bytes at byte {self.position}")
        return _Opaque("joblib array")

    # --- values -------------------------------------------------------------------

    def push_value(self, arg: Any) -> None:
        self.stack.append(arg)

    op_INT = op_BININT = op_BININT1 = op_BININT2 = op_LONG = op_LONG1 = op_LONG4 = push_value
    op_FLOAT = op_BINFLOAT = push_value
    op_STRING = op_BINSTRING = op_SHORT_BINSTRING = push_value
    op_UNICODE = op_BINUNICODE = op_SHORT_BINUNICODE = op_BINUNICODE8 = push_value
    op_BINBYTES = op_SHORT_BINBYTES = op_BINBYTES8 = push_value

    def op_BYTEARRAY8(self, arg: bytes) -> None:
        self.stack.append(bytearray(arg))

    def op_NONE(self, arg: None) -> None:
        self.stack.append(None)

    def op_NEWTRUE(self, arg: None) -> None:
        self.stack.append(True)

    def op_NEWFALSE(self, arg: None) -> None:
        self.stack.append(False)

    def op_EMPTY_LIST(self, arg: None) -> None:
        self.stack.append([])

    def op_EMPTY_TUPLE(self, arg: None) -> None:
        self.stack.append(())

    def op_EMPTY_DICT(self, arg: None) -> None:
        self.stack.append(_Dict())

    def op_EMPTY_SET(self, arg: None) -> None:
        self.stack.append(_Opaque("set"))

    # pop_mark swaps self.stack, so each value is built before self.stack.append is looked up.
    def op_LIST(self, arg: None) -> None:
        items = list(self.pop_mark())
        self.stack.append(items)

    def op_TUPLE(self, arg: None) -> None:
        items = tuple(self.pop_mark())
        self.stack.append(items)

    def op_TUPLE1(self, arg: None) -> None:
        self.stack.append((self.pop(),))

    def op_TUPLE2(self, arg: None) -> None:
        second = self.pop()
        self.stack.append((self.pop(), second))

    def op_TUPLE3(self, arg: None) -> None:
        third = self.pop()
        second = self.pop()
        self.stack.append((self.pop(), second, third))

    def op_DICT(self, arg: None) -> None:
        items = self.pop_mark()
        mapping = _Dict(list(zip(items[::2], items[1::2])))
        self.stack.append(mapping)

    def op_FROZENSET(self, arg: None) -> None:
        self.pop_mark()
        self.stack.append(_Opaque("frozenset"))

    def op_APPEND(self, arg: None) -> None:
        value = self.pop()
        target = self.top()
        if isinstance(target, list):
            target.append(value)

    def op_APPENDS(self, arg: None) -> None:
        items = self.pop_mark()
        target = self.top()
        if isinstance(target, list):
            target.extend(items)

    def op_SETITEM(self, arg: None) -> None:
        value = self.pop()
        key = self.pop()
        target = self.top()
        if isinstance(target, _Dict):
            target.items.append((key, value))

    def op_SETITEMS(self, arg: None) -> None:
        items = self.pop_mark()
        target = self.top()
        if isinstance(target, _Dict):
            target.items.extend(zip(items[::2], items[1::2]))

    def op_ADDITEMS(self, arg: None) -> None:
        self.pop_mark()
        self.top()

    def op_PERSID(self, arg: str) -> None:
        self.stack.append(_Opaque(f"persistent id {arg!r}"))

    def op_BINPERSID(self, arg: None) -> None:
        self.pop()
        self.stack.append(_Opaque("persistent id"))

    def op_NEXT_BUFFER(self, arg: None) -> None:
        self.stack.append(_Opaque("out-of-band buffer"))

    def op_READONLY_BUFFER(self, arg: None) -> None:
        self.top()

    # --- stack and memo -------------------------------------------------------------

    def op_MARK(self, arg: None) -> None:
        self.metastack.append(self.stack)
        self.stack = []

    def op_POP(self, arg: None) -> None:
        if self.stack:
            self.stack.pop()
        else:
            self.pop_mark()

    def op_POP_MARK(self, arg: None) -> None:
        self.pop_mark()

    def op_DUP(self, arg: None) -> None:
        self.stack.append(self.top())

    def _get(self, index: int) -> None:
        if index not in self.memo:
            raise _Malformed(f"memo key {index} is read before it is written at byte {self.position}")
        self.stack.append(self.memo[index])

    op_GET = op_BINGET = op_LONG_BINGET = _get

    def _put(self, index: int) -> None:
        if index < 0:
            raise _Malformed(f"negative memo key {index} at byte {self.position}")
        self.memo[index] = self.top()

    op_PUT = op_BINPUT = op_LONG_BINPUT = _put

    def op_MEMOIZE(self, arg: None) -> None:
        self.memo[len(self.memo)] = self.top()

    def op_PROTO(self, arg: int) -> None:
        self.proto = arg

    def op_FRAME(self, arg: int) -> None:
        pass


def _split_pair(arg: str) -> tuple[str, str]:
    # genops joins the two lines of GLOBAL and INST with one space; a module
    # name that itself contains a space cannot be split back, so it is kept
    # whole and can never match the allow-list.
    if arg.count(" ") == 1:
        module, name = arg.split(" ")
        return module, name
    return arg, ""


def _as_bytes(value: Any) -> bytes | None:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    # Protocol 2 stores bytes as _codecs.encode(text, "latin1").
    if (
        isinstance(value, _Call)
        and isinstance(value.func, _Global)
        and value.func.qualified_name == "_codecs.encode"
        and isinstance(value.args, tuple)
        and len(value.args) == 2
        and isinstance(value.args[0], str)
        and value.args[1] in ("latin1", "latin-1")
    ):
        try:
            return value.args[0].encode("latin-1")
        except UnicodeEncodeError:
            return None
    return None


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_joblib_array_wrapper(value: _Call) -> bool:
    func = value.func
    if isinstance(func, _Global) and func.qualified_name == "joblib.numpy_pickle.NumpyArrayWrapper":
        return True
    # Protocols 0 and 1 create instances through copyreg._reconstructor(cls, base, state).
    return (
        isinstance(func, _Global)
        and func.qualified_name == "copyreg._reconstructor"
        and isinstance(value.args, tuple)
        and bool(value.args)
        and isinstance(value.args[0], _Global)
        and value.args[0].qualified_name == "joblib.numpy_pickle.NumpyArrayWrapper"
    )


_TYPESTR = re.compile(r"([biufcmMOSUV])(\d*)")


def _dtype_layout(value: Any, depth: int = 0) -> tuple[int, bool] | None:
    """Return ``(itemsize, has_object)`` of a modelled ``numpy.dtype(...)`` value, or None if unknown."""
    if depth > 32 or not isinstance(value, _Call) or not isinstance(value.func, _Global):
        return None
    if value.func.qualified_name != "numpy.dtype" or not isinstance(value.args, tuple) or not value.args:
        return None
    typestr = value.args[0]
    match = _TYPESTR.fullmatch(typestr) if isinstance(typestr, str) else None
    if match is None:
        return None
    kind, digits = match.groups()
    state = value.state if isinstance(value.state, tuple) else ()
    # numpy's dtype state: (version, byteorder, subarray, names, fields, itemsize, alignment, flags[, metadata]).
    itemsize = state[5] if len(state) > 5 and _is_size(state[5]) and state[5] > 0 else None
    if itemsize is None:
        itemsize = int(digits) if digits else (8 if kind in "mM" else None)
    if itemsize is None:
        return None
    has_object = kind == "O"
    if len(state) > 2 and isinstance(state[2], tuple) and state[2]:
        inner = _dtype_layout(state[2][0], depth + 1)
        if inner is None:
            return None
        has_object = has_object or inner[1]
    if len(state) > 4 and isinstance(state[4], _Dict):
        for _, field_value in state[4].items:
            if not isinstance(field_value, tuple) or not field_value:
                return None
            inner = _dtype_layout(field_value[0], depth + 1)
            if inner is None:
                return None
            has_object = has_object or inner[1]
    return itemsize, has_object


def _describe(value: Any) -> str:
    if isinstance(value, _Global):
        return f"the global {value.qualified_name}" if value.resolved else "an unresolved global"
    if isinstance(value, _Call):
        callee = value.func.qualified_name if isinstance(value.func, _Global) else "a computed callable"
        return f"the result of calling {callee}"
    if isinstance(value, _Opaque):
        return f"a {value.description}"
    if isinstance(value, _Dict):
        return "a dict"
    if isinstance(value, (str, bytes, bytearray)):
        text = repr(value)
        return f"the constant {text[:60]}{'...' if len(text) > 60 else ''}"
    if isinstance(value, tuple):
        return f"a {len(value)}-tuple"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"

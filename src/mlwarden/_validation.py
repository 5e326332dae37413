"""Checks of user-supplied settings that raise :class:`~mlwarden.errors.ParameterError`.

Every message follows one template: the parameter, its owner, what is allowed,
what was given. The constructors of attacks and defenses call these helpers
instead of ``assert``, which ``python -O`` removes.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .errors import ParameterError

__all__ = [
    "check_real",
    "check_int",
    "check_choice",
    "check_bool",
    "check_bounds",
    "check_eps",
    "check_output_path",
]


def owner_of(instance: object) -> str:
    """Name an object in error messages: its command-line name and its class, as ``pgd (ProjectedGradientDescent)``.

    Command-line users know the first, Python users the second.
    """
    cls = type(instance).__name__
    name = getattr(type(instance), "name", None)
    return f"{name} ({cls})" if isinstance(name, str) and name and name != cls else cls


def _fail(owner: str, name: str, allowed: str, value: Any) -> ParameterError:
    return ParameterError(f"{owner}: {name} must be {allowed}, got {value!r}", value=value)


def check_real(
    value: Any,
    name: str,
    owner: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """Return ``value`` as a float after checking that it is a finite number in range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(owner, name, "a number", value)
    value = float(value)
    allowed = _range_text(low, high, low_inclusive, high_inclusive)
    if not math.isfinite(value):
        raise _fail(owner, name, f"a finite number{allowed}", value)
    if low is not None and (value < low or (value == low and not low_inclusive)):
        raise _fail(owner, name, f"a number{allowed}", value)
    if high is not None and (value > high or (value == high and not high_inclusive)):
        raise _fail(owner, name, f"a number{allowed}", value)
    return value


def check_int(value: Any, name: str, owner: str, *, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` as an int after checking that it is a whole number in range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise _fail(owner, name, f"an integer{_range_text(low, high, True, True)}", value)
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise _fail(owner, name, f"an integer{_range_text(low, high, True, True)}", value)
    return value


def check_choice(value: Any, name: str, owner: str, choices: Iterable[Any]) -> Any:
    """Return ``value`` after checking that it is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise _fail(owner, name, f"one of {listed}", value)
    return value


def check_bool(value: Any, name: str, owner: str) -> bool:
    """Return ``value`` after checking that it is True or False."""
    if not isinstance(value, bool):
        raise _fail(owner, name, "True or False", value)
    return value


def check_bounds(value: Any, owner: str, name: str = "bounds") -> tuple[float, float]:
    """Return ``(low, high)`` after checking that both are finite and ``low < high``."""
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise _fail(owner, name, "a pair (low, high) such as (0.0, 1.0)", value)
    low = check_real(value[0], f"{name}[0]", owner)
    high = check_real(value[1], f"{name}[1]", owner)
    if not low < high:
        raise _fail(owner, name, "a pair (low, high) with low < high", value)
    return low, high


def check_eps(value: Any, owner: str, name: str = "eps") -> list[float]:
    """Return the budget(s) as a list of non-negative floats.

    A scalar gives a one-element list; a sequence sweeps several budgets.
    """
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) == 0:
            raise _fail(owner, name, "a non-negative number or a non-empty list of them", value)
        return [check_real(v, name, owner, low=0.0) for v in value]
    return [check_real(value, name, owner, low=0.0)]


def _range_text(low: float | None, high: float | None, low_inclusive: bool, high_inclusive: bool) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>=' if low_inclusive else '>'} {low:g}"
    if low is None:
        return f" {'<=' if high_inclusive else '<'} {high:g}"
    left = "[" if low_inclusive else "("
    right = "]" if high_inclusive else ")"
    return f" in {left}{low:g}, {high:g}{right}"


def check_output_path(path: str | Path, owner: str, *, name: str = "--output", folder: bool = False) -> Path:
    """Check that ``path`` can be written, before any long work, and return it as a Path.

    Every existing ancestor of ``path`` must be a folder, and so must ``path``
    itself when ``folder`` is True. Commands call this before long work, so a
    bad path fails at once instead of when the results are written.

    Raises
    ------
    ParameterError
        If ``path`` or one of its ancestors is an existing file, not a folder.
    """
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise ParameterError(
            f"{owner}: {name} {str(path)!r} is a file, not a folder; pass a new or existing folder", value=str(path)
        )
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            raise ParameterError(
                f"{owner}: {name} {str(path)!r} cannot be written because its parent {str(parent)!r} is a file, "
                "not a folder; pass a path whose parents are folders",
                value=str(path),
            )
    return path

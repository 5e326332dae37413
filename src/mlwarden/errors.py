"""Exceptions raised for user mistakes and rejected inputs.

Every error that a user can cause derives from :class:`MlwardenError`, and
also from the built-in exception that fits it, so ``except ValueError`` keeps
working for callers who do not know mlwarden. The message names the value and
the fix, and the offending value is kept in the ``value`` attribute.

::

    MlwardenError
    ├── ParameterError (ValueError)   an invalid setting of an attack, defense or command
    ├── DataError (ValueError)        a data set that is missing, corrupt or of the wrong shape
    ├── ModelError (TypeError)        a model that cannot be loaded or returns the wrong output
    ├── PlanError (ValueError)        an assessment plan (YAML or command line) that is invalid
    ├── BudgetExhausted (RuntimeError) a query budget that ran out
    └── IntegrityError (ValueError)   a file, signature or record that failed verification
        └── UnsafeFileError           a model file that would run code when loaded

The command line prints any of these on one line and exits with status 2.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "MlwardenError",
    "ParameterError",
    "DataError",
    "ModelError",
    "PlanError",
    "BudgetExhausted",
    "IntegrityError",
    "UnsafeFileError",
]

_MISSING = object()


class MlwardenError(Exception):
    """Base class of the errors that a user of mlwarden can cause."""

    def __init__(self, message: str, *, value: Any = _MISSING) -> None:
        super().__init__(message)
        self.message = message
        self.value = None if value is _MISSING else value


class ParameterError(MlwardenError, ValueError):
    """An invalid setting of an attack, defense, model or command."""


class DataError(MlwardenError, ValueError):
    """A data set that is missing, corrupt, or of an unexpected shape."""


class ModelError(MlwardenError, TypeError):
    """A model that cannot be loaded or whose output is not usable."""


class PlanError(MlwardenError, ValueError):
    """An invalid assessment plan, from a YAML file or the command line."""


class BudgetExhausted(MlwardenError, RuntimeError):
    """A query budget that ran out before the work was done."""


class IntegrityError(MlwardenError, ValueError):
    """A file, manifest, signature or record that failed verification."""


class UnsafeFileError(IntegrityError):
    """A model file that would import or call code outside the allow-list when loaded."""

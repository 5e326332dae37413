"""The interface of execution engines, and the choice of one by name.

An engine runs a task function on many work units against one payload and
yields each unit's result as soon as it is done, in completion order. It
owns the workers: it ships the payload to each worker once, retries units
whose worker died, and cancels what is left when the caller stops reading
(Ctrl-C, or an error). Callers pass any picklable top-level task function,
so assessments and data scans share the engines.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Sequence
from typing import Any, Protocol, TypeVar

from ...errors import ParameterError

__all__ = ["Engine", "ENGINE_NAMES", "get_engine", "cpu_count", "threads_per_process"]

UnitT = TypeVar("UnitT")

ENGINE_NAMES = ("local", "dask")

DASK_INSTALL_HINT = "pip install 'mlwarden[dask]'"


class Engine(Protocol):
    """Runs ``task(unit, payload)`` for every unit and yields ``(unit, result)`` as units finish."""

    name: str

    def run(
        self, task: Callable[[Any, Any], dict[str, Any]], payload: Any, units: Sequence[UnitT]
    ) -> Generator[tuple[UnitT, dict[str, Any]], None, None]:
        """Yield each unit with its result; closing the generator cancels the units not yet done."""
        ...

    def __enter__(self) -> Engine:
        """Hold workers open across several runs until the ``with`` block ends."""
        ...

    def __exit__(self, *exc_info: object) -> None:
        """Release what ``__enter__`` holds."""
        ...

    def describe(self) -> dict[str, Any]:
        """Return what ``results.json`` records about the engine (name, workers)."""
        ...


def cpu_count() -> int:
    """Return the CPUs this process may use (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def threads_per_process(cores: int, processes: int) -> int:
    """Return torch threads for each of ``processes`` worker processes sharing ``cores``, at least 1."""
    return max(1, cores // max(1, processes))


def get_engine(name: str, *, scheduler: str | None = None, workers: int | None = None) -> Engine:
    """Return the engine called ``name``.

    Parameters
    ----------
    name : {"local", "dask"}
        ``local``: a process pool on this machine (no Dask needed).
        ``dask``: a Dask cluster, a new ``LocalCluster`` on 127.0.0.1 or the
        one at ``scheduler``.
    scheduler : str, optional
        Address of a running Dask scheduler, such as ``tcp://10.0.0.1:8786``.
    workers : int, optional
        Worker processes to start; default one per CPU. Not allowed with
        ``scheduler``, whose cluster has its own workers.

    Raises
    ------
    ParameterError
        Unknown engine, a scheduler without the Dask engine, or Dask is not
        installed (the message gives the install command).
    """
    if name not in ENGINE_NAMES:
        raise ParameterError(f"engine must be one of {', '.join(ENGINE_NAMES)}, got {name!r}", value=name)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ParameterError(f"workers must be a positive integer, got {workers!r}", value=workers)
    if name == "local":
        if scheduler is not None:
            raise ParameterError(
                f"a scheduler address ({scheduler}) needs the Dask engine; add --engine dask", value=scheduler
            )
        from .local import LocalEngine

        return LocalEngine(workers=workers)
    if scheduler is not None and workers is not None:
        raise ParameterError(
            "workers sets the size of a new local Dask cluster; a cluster joined with --scheduler has its own "
            "workers, so drop --workers",
            value=workers,
        )
    try:
        from .dask import DaskEngine
    except ImportError as error:
        raise ParameterError(
            f"--engine dask needs the optional packages dask and distributed ({error}); install them with "
            f"{DASK_INSTALL_HINT}",
            value=name,
        ) from None
    return DaskEngine(scheduler=scheduler, workers=workers)

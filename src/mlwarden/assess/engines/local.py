"""The local engine: a pool of worker processes on this machine, the default.

Each worker process receives the payload once, through the pool's
initializer, and runs units with ``cores // workers`` torch threads, so the
pool never oversubscribes the CPUs. With one worker, or a single unit, the
units run in this process and nothing is spawned.

A worker process that dies (killed, out of memory) breaks a
:class:`~concurrent.futures.ProcessPoolExecutor`; the engine then starts a
new pool and submits the units that had not finished again, up to
``max_restarts`` times. Worker processes ignore SIGINT, so Ctrl-C reaches
only this process, which cancels the pending units and stops the pool.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import torch

from ..._validation import check_int
from .base import cpu_count, threads_per_process

__all__ = ["LocalEngine"]

logger = logging.getLogger(__name__)

UnitT = TypeVar("UnitT")

# State of a pool worker process, set once by _install_payload.
_WORKER_PAYLOAD: Any = None


def _install_payload(payload: Any, threads: int) -> None:
    """Initialize a pool worker: keep the payload, ignore Ctrl-C, and size torch's thread pool."""
    global _WORKER_PAYLOAD
    _WORKER_PAYLOAD = payload
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)


def _run_installed(task: Callable[[Any, Any], dict[str, Any]], unit: Any) -> dict[str, Any]:
    return task(unit, _WORKER_PAYLOAD)


class LocalEngine:
    """Run units in a process pool on this machine.

    Parameters
    ----------
    workers : int, optional
        Worker processes; default one per CPU, and never more than units.
    max_restarts : int, default 3
        How many times a broken pool (a worker process died) is replaced
        before the run fails.
    """

    name = "local"

    def __init__(self, *, workers: int | None = None, max_restarts: int = 3) -> None:
        self.workers = None if workers is None else check_int(workers, "workers", "LocalEngine", low=1)
        self.max_restarts = check_int(max_restarts, "max_restarts", "LocalEngine", low=0)
        self._used_workers = 1

    def describe(self) -> dict[str, Any]:
        """Return the engine's name and the number of worker processes of the last run."""
        return {"name": self.name, "workers": self._used_workers}

    def __enter__(self) -> LocalEngine:
        """Return the engine; each run starts its own pool, so there is nothing to hold open."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def run(
        self, task: Callable[[Any, Any], dict[str, Any]], payload: Any, units: Sequence[UnitT]
    ) -> Generator[tuple[UnitT, dict[str, Any]], None, None]:
        """Yield ``(unit, task(unit, payload))`` for every unit, in completion order."""
        workers = min(self.workers or cpu_count(), len(units))
        self._used_workers = max(workers, 1)
        if workers <= 1:
            for unit in units:
                yield unit, task(unit, payload)
            return
        yield from self._run_pool(task, payload, list(units), workers)

    def _run_pool(
        self, task: Callable[[Any, Any], dict[str, Any]], payload: Any, units: list[UnitT], workers: int
    ) -> Generator[tuple[UnitT, dict[str, Any]], None, None]:
        threads = threads_per_process(cpu_count(), workers)
        pending = list(units)
        restarts = 0
        while pending:
            # Spawned (not forked) workers: forking a process whose OpenMP threads are running can deadlock.
            pool = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_install_payload,
                initargs=(payload, threads),
            )
            futures: dict[Future[dict[str, Any]], UnitT] = {}
            finished = False
            try:
                futures = {pool.submit(_run_installed, task, unit): unit for unit in pending}
                not_done = set(futures)
                while not_done:
                    done, not_done = wait(not_done, return_when=FIRST_COMPLETED)
                    for future in done:
                        unit = futures[future]
                        try:
                            result = future.result()
                        except BrokenProcessPool:
                            continue
                        pending.remove(unit)
                        yield unit, result
                finished = True
            finally:
                if finished or not pending:
                    pool.shutdown(wait=True)
                else:
                    _stop_pool(pool)
            if pending:
                restarts += 1
                if restarts > self.max_restarts:
                    raise RuntimeError(
                        f"worker processes died {restarts} times; {len(pending)} units did not finish "
                        "(a unit may need more memory than a worker has: lower batch_size or the shard size)"
                    )
                logger.warning("a worker process died; restarting the pool for %d unfinished units", len(pending))


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel the pool's queued units and end its worker processes without waiting for running units."""
    # NOTE: ProcessPoolExecutor has no public way to stop running work; _processes is private to CPython.
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()

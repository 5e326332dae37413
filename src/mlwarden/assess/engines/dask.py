"""The Dask engine: work units on a ``dask.distributed`` cluster.

Without a scheduler address the engine starts a ``LocalCluster`` on
127.0.0.1 with one single-threaded worker process per CPU; with an address
it joins that cluster (``dask scheduler`` on one node, ``dask worker
ADDRESS`` on the others) and leaves it running afterwards.

The payload (model and data) is scattered to every worker once, and each
unit is a task that takes the scattered payload as an argument, so tasks
carry only the unit's description. Each task sets torch's thread count to
the host's cores divided by the worker threads on that host: Dask starts
workers with ``OMP_NUM_THREADS=1``, which would leave a worker with several
cores on one thread.

Dask's nanny starts worker processes with ``MALLOC_TRIM_THRESHOLD_=65536``
(its ``distributed.nanny.pre-spawn-environ`` setting), which makes glibc
return freed memory to the system at once. torch allocates and frees large
buffers on every batch, and the resulting page faults cost about as much
CPU as the attack itself (see the benchmark in ``docs/benchmarks.md``), so
the clusters this engine starts unset it. Set ``malloc_trim_threshold`` to
keep Dask's value, and see ``docs/dask.md`` for workers started by hand.

Faults: when a worker dies, the scheduler runs its tasks again elsewhere
(up to ``distributed.scheduler.allowed-failures`` deaths per task, then the
task fails with ``KilledWorker``). If every copy of the scattered payload was
lost with its workers, the engine scatters it again and resubmits the units.
Each unit's result is yielded once, whatever ran twice.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any, TypeVar

import dask
import torch
from distributed import Client, KilledWorker, LocalCluster, as_completed, get_worker
from distributed.client import FutureCancelledError
from distributed.comm import get_address_host

from ..._validation import check_int
from ...errors import ParameterError, PlanError
from .base import cpu_count, threads_per_process

__all__ = ["DaskEngine", "DASK_MALLOC_TRIM_THRESHOLD"]

logger = logging.getLogger(__name__)

UnitT = TypeVar("UnitT")

# The value Dask's nanny gives worker processes by default (distributed.yaml).
DASK_MALLOC_TRIM_THRESHOLD = 65536

_PRE_SPAWN_TRIM = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
_WORKER_WAIT_SECONDS = 60
_POLL_SECONDS = 0.05
_WORKER_PRELOAD = "mlwarden.assess.engines._dask_worker"


def _run_on_worker(
    task: Callable[..., dict[str, Any]], unit: Any, payload: Any, threads_by_host: dict[str, int], *blocks: Any
) -> dict[str, Any]:
    """Run one unit on a Dask worker, with torch threads sized for the worker's host."""
    host = get_address_host(get_worker().address)
    torch.set_num_threads(threads_by_host.get(host, 1))
    return task(unit, payload, *blocks)


def _poll(completed: as_completed) -> Iterator[Any]:
    """Yield finished futures, waiting in short sleeps.

    Ctrl-C during a blocking Dask call interrupts Dask's event-loop
    bookkeeping, which then logs errors of its own. A KeyboardInterrupt raised
    during ``time.sleep`` leaves Dask's state intact for the cancellation.
    """
    while not completed.is_empty():
        batch = completed.next_batch(block=False)
        if not batch:
            time.sleep(_POLL_SECONDS)
        yield from batch


def _quiet_dask_logs() -> None:
    """Keep Dask's INFO messages (cluster start, worker registration) out of the console unless mlwarden logs DEBUG."""
    dask_logger = logging.getLogger("distributed")
    if not logger.isEnabledFor(logging.DEBUG) and dask_logger.getEffectiveLevel() < logging.WARNING:
        dask_logger.setLevel(logging.WARNING)


class DaskEngine:
    """Run units on a Dask cluster.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://HOST:8786``); default: start
        a ``LocalCluster`` on 127.0.0.1 for the duration of the run.
    workers : int, optional
        Worker processes of the local cluster; default one per CPU.
    malloc_trim_threshold : int, optional
        ``MALLOC_TRIM_THRESHOLD_`` for the local cluster's worker processes;
        default None unsets it (see the module docstring).
    max_resubmits : int, default 3
        How often a unit is submitted again after its payload was lost.
    """

    name = "dask"

    def __init__(
        self,
        *,
        scheduler: str | None = None,
        workers: int | None = None,
        malloc_trim_threshold: int | None = None,
        max_resubmits: int = 3,
    ) -> None:
        owner = "DaskEngine"
        self.scheduler = scheduler
        self.workers = None if workers is None else check_int(workers, "workers", owner, low=1)
        self.malloc_trim_threshold = (
            None if malloc_trim_threshold is None else check_int(malloc_trim_threshold, "malloc_trim_threshold", owner, low=0)
        )
        self.max_resubmits = check_int(max_resubmits, "max_resubmits", owner, low=0)
        self._described: dict[str, Any] = {"name": self.name, "scheduler": scheduler or "local"}
        self._session: tuple[LocalCluster | None, Client] | None = None

    def __enter__(self) -> DaskEngine:
        """Connect (or start the local cluster) once for several runs, until the ``with`` block ends."""
        _quiet_dask_logs()
        self._session = self._connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        session, self._session = self._session, None
        if session is not None:
            self._disconnect(*session)

    def describe(self) -> dict[str, Any]:
        """Return the engine's name, scheduler and the workers of the last run."""
        return dict(self._described)

    def run(
        self, task: Callable[[Any, Any], dict[str, Any]], payload: Any, units: Sequence[UnitT]
    ) -> Generator[tuple[UnitT, dict[str, Any]], None, None]:
        """Yield ``(unit, task(unit, payload))`` for every unit, in completion order."""
        return self.run_blocks(task, payload, units, None)

    def run_blocks(
        self,
        task: Callable[..., dict[str, Any]],
        payload: Any,
        units: Sequence[UnitT],
        blocks: Callable[[UnitT], tuple[Any, ...]] | None,
    ) -> Generator[tuple[UnitT, dict[str, Any]], None, None]:
        """Yield ``(unit, task(unit, payload, *blocks))`` for every unit, in completion order.

        ``blocks(unit)`` returns Dask collections or delayed objects, such as
        the chunks of a Dask array. Each worker computes the blocks of its
        unit and passes them to the task as NumPy arrays, so the data is read
        where it is used, one unit at a time.
        """
        if not units:
            return
        if self._session is not None:
            yield from self._run_on_client(self._session[1], task, payload, units, blocks)
            return
        _quiet_dask_logs()
        cluster, client = self._connect()
        try:
            yield from self._run_on_client(client, task, payload, units, blocks)
        finally:
            self._disconnect(cluster, client)

    @staticmethod
    def _disconnect(cluster: LocalCluster | None, client: Client) -> None:
        client.close()
        if cluster is not None:
            cluster.close()
            logger.info("stopped the local Dask cluster")

    def _connect(self) -> tuple[LocalCluster | None, Client]:
        # set_as_default=False: the engine's client must not become the scheduler of the caller's own
        # Dask computations, which would fail once the engine closes it.
        if self.scheduler is None:
            cluster = self._start_local_cluster()
            return cluster, Client(cluster, set_as_default=False)
        try:
            client = Client(self.scheduler, timeout="20s", set_as_default=False)
        except (OSError, TimeoutError) as error:
            raise ParameterError(
                f"cannot connect to the Dask scheduler at {self.scheduler}: {error}; check the address and that "
                "'dask scheduler' runs there",
                value=self.scheduler,
            ) from None
        try:
            client.wait_for_workers(1, timeout=_WORKER_WAIT_SECONDS)
        except TimeoutError:
            client.close()
            raise ParameterError(
                f"no Dask worker joined the scheduler at {self.scheduler} within {_WORKER_WAIT_SECONDS} s; start "
                f"workers with 'dask worker {self.scheduler}'",
                value=self.scheduler,
            ) from None
        return None, client

    def _start_local_cluster(self) -> LocalCluster:
        workers = self.workers or cpu_count()
        if self.malloc_trim_threshold is None and os.environ.get("MALLOC_TRIM_THRESHOLD_") == str(DASK_MALLOC_TRIM_THRESHOLD):
            # An earlier nanny in this process exported Dask's value into os.environ, where new workers would inherit it.
            del os.environ["MALLOC_TRIM_THRESHOLD_"]
        with dask.config.set({_PRE_SPAWN_TRIM: self.malloc_trim_threshold}):
            cluster = LocalCluster(
                host="127.0.0.1",
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                # The scheduler serves HTTP (dashboard, health) on this address; port 0 picks a free one.
                dashboard_address="127.0.0.1:0",
                preload=[_WORKER_PRELOAD],
            )
        logger.info("started a local Dask cluster at %s with %d workers", cluster.scheduler_address, workers)
        return cluster

    def _threads_by_host(self, client: Client) -> dict[str, int]:
        """Return torch threads per worker thread for each host: its cores over its worker threads."""
        try:
            workers = client.scheduler_info(n_workers=-1)["workers"]
        except TypeError:  # distributed releases before the n_workers argument
            workers = client.scheduler_info()["workers"]
        cores = client.run(cpu_count)
        threads_on_host: dict[str, int] = {}
        cores_on_host: dict[str, int] = {}
        for address, info in workers.items():
            host = get_address_host(address)
            threads_on_host[host] = threads_on_host.get(host, 0) + int(info.get("nthreads", 1))
            cores_on_host[host] = int(cores.get(address, 1))
        self._described.update(workers=len(workers), threads=sum(threads_on_host.values()))
        return {host: threads_per_process(cores_on_host[host], threads_on_host[host]) for host in threads_on_host}

    def _run_on_client(
        self,
        client: Client,
        task: Callable[..., dict[str, Any]],
        payload: Any,
        units: Sequence[UnitT],
        blocks: Callable[[UnitT], tuple[Any, ...]] | None,
    ) -> Generator[tuple[UnitT, dict[str, Any]], None, None]:
        threads_by_host = self._threads_by_host(client)
        scattered = client.scatter(payload, broadcast=True, hash=False)
        futures: dict[Any, UnitT] = {}
        resubmits: dict[int, int] = {}
        completed = as_completed(loop=client.loop)

        def submit(unit: UnitT) -> None:
            key = f"mlwarden-{getattr(unit, 'id', 'unit')}-{uuid.uuid4().hex[:8]}"
            if blocks is None:
                future = client.submit(_run_on_worker, task, unit, scattered, threads_by_host, key=key, pure=False)
            else:
                graph = dask.delayed(_run_on_worker, pure=False)(
                    task, unit, scattered, threads_by_host, *blocks(unit), dask_key_name=key
                )
                future = client.compute(graph)
            futures[future] = unit
            completed.add(future)

        for unit in units:
            submit(unit)
        try:
            for future in _poll(completed):
                unit = futures.pop(future)
                try:
                    result = future.result()
                except KilledWorker as error:
                    raise PlanError(
                        f"unit {getattr(unit, 'id', unit)} was running on several workers that died ({error}); it may "
                        "need more memory than a worker has: lower batch_size or the shard size",
                        value=getattr(unit, "id", None),
                    ) from None
                except FutureCancelledError:
                    # The scattered payload was lost with every worker that held it.
                    count = resubmits.get(id(unit), 0) + 1
                    if count > self.max_resubmits:
                        raise
                    resubmits[id(unit)] = count
                    if scattered.status != "finished":
                        logger.warning("the payload was lost with its workers; scattering it again")
                        scattered = client.scatter(payload, broadcast=True, hash=False)
                    logger.warning("submitting unit %s again (try %d)", getattr(unit, "id", unit), count + 1)
                    submit(unit)
                    continue
                yield unit, result
        finally:
            if futures:
                logger.info("cancelling %d unfinished units", len(futures))
                client.cancel(list(futures))

"""Process-pool and Dask engines: equal results, killed workers, the local cluster's settings.

Every cluster here listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mlwarden.assess import AttackSpec, Plan, read_results
from mlwarden.assess.engines import LocalEngine, run_plan
from mlwarden.cli.main import main

distributed = pytest.importorskip("distributed")
psutil = pytest.importorskip("psutil")

from mlwarden.assess.engines.dask import DaskEngine  # noqa: E402  (needs distributed)

pytestmark = pytest.mark.slow

PLAN = Plan(
    limit=400,
    batch_size=50,
    attacks=(AttackSpec("fgsm"), AttackSpec("pgd", {"steps": 10}), AttackSpec("bim", {"steps": 5, "target": "random"})),
)
SHARD = 50


@pytest.fixture(scope="module")
def cluster(dask_cluster):
    return dask_cluster


@pytest.fixture(scope="module")
def local_results() -> dict[str, Any]:
    return run_plan(PLAN, engine=LocalEngine(workers=2), shard_size=SHARD, progress=False)


@pytest.fixture(scope="module")
def dask_results(cluster) -> dict[str, Any]:
    return run_plan(PLAN, engine="dask", scheduler=cluster.scheduler_address, shard_size=SHARD, progress=False)


def test_local_and_dask_engines_agree(local_results, dask_results, result_figures):
    assert local_results["engine"]["workers"] == 2
    assert dask_results["engine"]["name"] == "dask"
    assert dask_results["engine"]["workers"] == 2
    assert result_figures(local_results) == result_figures(dask_results)


def _kill_busy_worker(cluster, folder: Path, killed: dict[str, Any]) -> None:
    """Once a unit has finished, SIGKILL a worker process that is running a unit."""
    with distributed.Client(cluster.scheduler_address) as client:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            busy = [address for address, keys in client.processing().items() if any("mlwarden-" in str(k) for k in keys)]
            if busy and list(folder.glob("*.unit.json")):
                pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
                killed["finished_before"] = len(list(folder.glob("*.unit.json")))
                killed["pid"] = pid
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.02)


def test_killed_dask_worker_changes_nothing(cluster, dask_results, tmp_path, result_figures):
    folder = tmp_path / "units"
    killed: dict[str, Any] = {}
    killer = threading.Thread(target=_kill_busy_worker, args=(cluster, folder, killed))
    killer.start()
    results = run_plan(PLAN, engine="dask", scheduler=cluster.scheduler_address, shard_size=SHARD, units_dir=folder, progress=False)
    killer.join()

    assert "pid" in killed, "no worker was killed during the run"
    assert killed["finished_before"] < results["engine"]["units"]
    assert result_figures(results) == result_figures(dask_results)


def test_killed_pool_worker_changes_nothing(local_results, tmp_path, result_figures):
    folder = tmp_path / "units"
    killed: dict[str, Any] = {}

    def kill_one_child() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            children = [child for child in psutil.Process().children() if "python" in child.name().lower()]
            if len(children) >= 2 and list(folder.glob("*.unit.json")):
                killed["finished_before"] = len(list(folder.glob("*.unit.json")))
                children[-1].kill()
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_one_child)
    killer.start()
    results = run_plan(PLAN, engine=LocalEngine(workers=2), shard_size=SHARD, units_dir=folder, progress=False)
    killer.join()

    assert "finished_before" in killed, "no pool worker was killed during the run"
    assert killed["finished_before"] < results["engine"]["units"]
    assert result_figures(results) == result_figures(local_results)


def test_own_cluster_unsets_malloc_trim(cluster):
    import dask

    # Dask's default, which the clusters started with default settings (the fixture's) receive.
    assert dask.config.get("distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_") == 65536
    with distributed.Client(cluster.scheduler_address) as client:
        assert set(client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_")).values()) == {"65536"}

    def probe(unit: Any, payload: Any) -> dict[str, Any]:
        return {"trim": os.environ.get("MALLOC_TRIM_THRESHOLD_"), "address": distributed.get_worker().address}

    engine = DaskEngine(workers=1)
    outcomes = [result for _, result in engine.run(probe, None, [object()])]
    assert outcomes[0]["trim"] is None
    assert outcomes[0]["address"].startswith("tcp://127.0.0.1:")
    assert engine.describe()["workers"] == 1


def test_cli_runs_on_dask_scheduler(cluster, tmp_path):
    output = tmp_path / "run"
    status = main(
        [
            "assess", "--limit", "100", "--batch-size", "50", "--attack", "fgsm",
            "--engine", "dask", "--scheduler", cluster.scheduler_address, "--output", str(output),
        ]
    )  # fmt: skip
    assert status == 0
    results = read_results(output)
    assert results["engine"]["name"] == "dask"
    assert results["engine"]["scheduler"] == cluster.scheduler_address
    assert (output / "report.md").is_file()

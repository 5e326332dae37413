"""Helpers for comparing runs on different engines or splits, and a shared local Dask cluster."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

# Fields that measure the run itself (time, machine, engine) rather than the model.
RUN_FIELDS = ("seconds", "created", "environment", "engine")


def without_run_fields(results: dict[str, Any]) -> dict[str, Any]:
    """Return ``results`` without the fields that differ between two runs of the same plan."""
    figures = {key: value for key, value in results.items() if key not in RUN_FIELDS}
    figures["attacks"] = [{key: value for key, value in attack.items() if key != "seconds"} for attack in results["attacks"]]
    return figures


@pytest.fixture
def result_figures() -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Return the function that drops timing and engine fields from ``results.json`` content."""
    return without_run_fields


@pytest.fixture(scope="session")
def dask_cluster() -> Any:
    """Two single-threaded worker processes on 127.0.0.1, started with Dask's default settings."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        host="127.0.0.1", n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0"
    ) as cluster:
        yield cluster

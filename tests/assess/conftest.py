"""Helpers for comparing assessments that ran on different engines or splits."""

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

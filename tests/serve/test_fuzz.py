"""Fuzzing the OpenAPI schema of a running service with schemathesis: no input may cause a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from mlwarden.serve import MonitorSettings, ServiceConfig
from mlwarden.serve.keys import SCOPES


@pytest.mark.slow
def test_schema_fuzz_finds_no_server_error(start_service) -> None:
    # The monitor only alerts here, so that random inputs do not block the key and hide deeper code paths.
    running = start_service(ServiceConfig(monitor=MonitorSettings(action="alert")))
    token = running.key(*SCOPES, rate=10_000, burst=10_000, daily_quota=10_000_000)
    schema = schemathesis.openapi.from_url(f"{running.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    server_errors: list[str] = []

    for operation in operations:
        # schemathesis' own pytest integration reads a private pytest attribute that pytest 9 removed,
        # so each operation's strategy runs under a plain hypothesis test instead.
        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
        @given(case=operation.as_strategy())
        def call(case: schemathesis.Case) -> None:
            response = case.call(headers={"Authorization": f"Bearer {token}"}, timeout=30)
            if response.status_code >= 500:
                server_errors.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:200]}")

        call()
    assert server_errors == []
    # The server is still up after the fuzzing.
    assert schemathesis.openapi.from_url(f"{running.url}/openapi.json") is not None

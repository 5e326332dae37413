"""Fixtures of the service tests: real uvicorn servers on 127.0.0.1, started and stopped by the tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch

from mlwarden.serve import ServedModel, Service, ServiceConfig, ServiceThread, build_service, load_served_model
from mlwarden.serve.keys import KeyStore


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Run torch on one thread: with the CPU shared, more threads mostly wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def served_lenet() -> ServedModel:
    """The shipped LeNet-5 as the service loads it (hash checked)."""
    return load_served_model("lenet5")


@dataclass
class RunningService:
    """A service on a real uvicorn server in a thread, with its URL and state."""

    url: str
    service: Service
    thread: ServiceThread

    def key(self, *scopes: str, rate: float = 1000.0, burst: int = 1000, daily_quota: int = 1_000_000) -> str:
        """Create a key directly in the service database and return its token."""
        _, token = self.service.keys.create("test", scopes, rate=rate, burst=burst, daily_quota=daily_quota)
        return token

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0)


@pytest.fixture
def start_service(
    served_lenet: ServedModel, tmp_path: Path
) -> Iterator[Callable[..., RunningService]]:
    """Start services (each with its own database) on free loopback ports; stop them after the test."""
    running: list[ServiceThread] = []

    def start(config: ServiceConfig | None = None, model: ServedModel | None = None, **kwargs: object) -> RunningService:
        service = build_service(model or served_lenet, tmp_path / f"service-{len(running)}.db", config, **kwargs)
        thread = ServiceThread(service).start()
        running.append(thread)
        response = httpx.get(f"{thread.url}/healthz", timeout=10.0)
        assert response.status_code == 200
        return RunningService(thread.url, service, thread)

    yield start
    for thread in running:
        thread.stop()


@pytest.fixture(scope="module")
def shared_service(served_lenet: ServedModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    """One fully guarded service for the tests of a module that do not change its configuration."""
    database = tmp_path_factory.mktemp("shared") / "service.db"
    service = build_service(served_lenet, database)
    with ServiceThread(service) as thread:
        yield RunningService(thread.url, service, thread)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class ServeProcess:
    """``mlwarden serve`` in a subprocess."""

    process: subprocess.Popen[bytes]
    url: str
    database: Path
    log: Path


def start_serve_process(database: Path, log: Path, *extra: str, timeout: float = 90.0) -> ServeProcess:
    """Run ``mlwarden serve`` on a free loopback port and wait until /healthz responds."""
    port = free_port()
    command = [sys.executable, "-m", "mlwarden.cli.main", "serve", "--db", str(database), "--port", str(port), *extra]
    handle = open(log, "ab")
    process = subprocess.Popen(command, stdout=handle, stderr=handle, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    handle.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlwarden serve exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200:
                return ServeProcess(process, url, database, log)
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"mlwarden serve did not answer /healthz within {timeout:g} s")


def create_key(database: Path, *scopes: str, rate: float = 1000.0, burst: int = 1000) -> str:
    """Create a key in a service database from outside the server, as 'mlwarden keys create' does."""
    from mlwarden.serve import ServiceDatabase

    with ServiceDatabase(database) as opened:
        _, token = KeyStore(opened).create("test", scopes, rate=rate, burst=burst)
    return token

"""Running the service on uvicorn: in the foreground for ``mlwarden serve``, or in a thread for tests and drills.

Uvicorn stops gracefully on SIGINT and SIGTERM: it stops accepting
connections, lets running requests finish (an upload in flight is committed
and acknowledged), then the application's shutdown closes the service,
which writes the queued audit rows and checkpoints the database.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from types import TracebackType

import uvicorn
from fastapi import FastAPI

from ..errors import ParameterError
from .app import create_app
from .config import ServiceConfig
from .database import ServiceDatabase
from .model import ServedModel
from .service import Service

__all__ = ["build_service", "run_server", "ServiceThread", "LOOPBACK_HOSTS", "is_loopback"]

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    """Return whether ``host`` names this machine's loopback interface."""
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def build_service(
    model: ServedModel, database: str | Path | ServiceDatabase, config: ServiceConfig | None = None, **kwargs: object
) -> Service:
    """Open the database (a path or an open one) and return the service around ``model``."""
    if not isinstance(database, ServiceDatabase):
        database = ServiceDatabase(database)
    return Service(model, database, config, **kwargs)  # type: ignore[arg-type]


def _uvicorn_config(app: FastAPI, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=30,
    )


def run_server(service: Service, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until SIGINT or SIGTERM, logging the start (the application logs the stop).

    After a graceful stop on a signal, uvicorn raises the signal again, so
    the process ends with that signal's status (143 for SIGTERM).
    """
    if not is_loopback(host):
        logger.warning(
            "listening on %s, which is not the loopback interface: the service is reachable from other machines",
            host,
            extra={"event": "service.exposed", "host": host},
        )
    app = create_app(service)
    server = uvicorn.Server(_uvicorn_config(app, host, port))
    logger.info(
        "service starting on http://%s:%d with guards %s",
        host,
        port,
        ", ".join(sorted(service.config.guards)) or "none",
        extra={
            "event": "service.start",
            "host": host,
            "port": port,
            "model": service.model.name,
            "sha256": service.model.sha256,
            "guards": sorted(service.config.guards),
            "database": str(service.database.path),
        },
    )
    try:
        server.run()
    finally:
        # Normally the application's shutdown closed it already; this covers a failed start.
        service.close()


class ServiceThread:
    """The service on 127.0.0.1 in a background thread, on a free port; a context manager.

    Parameters
    ----------
    service : Service
    host : str, default "127.0.0.1"
        Must be a loopback address.
    port : int, default 0
        0 picks a free port.
    close_service : bool, default True
        Close the service when the server stops.

    Attributes
    ----------
    url : str
        ``http://127.0.0.1:PORT`` once started.
    """

    def __init__(self, service: Service, *, host: str = "127.0.0.1", port: int = 0, close_service: bool = True) -> None:
        if not is_loopback(host):
            raise ParameterError(f"ServiceThread listens on loopback only, got host {host!r}", value=host)
        self.service = service
        self.app = create_app(service, close_on_shutdown=close_service)
        self._socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.port = int(self._socket.getsockname()[1])
        self.host = host
        self.url = f"http://{host}:{self.port}"
        self._server = uvicorn.Server(_uvicorn_config(self.app, host, self.port))
        self._thread = threading.Thread(target=self._run, name=f"mlwarden-serve-{self.port}", daemon=True)

    def _run(self) -> None:
        self._server.run(sockets=[self._socket])

    def start(self, timeout: float = 30.0) -> ServiceThread:
        """Start the server and wait until it accepts requests."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start on {self.url} within {timeout:g} s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop gracefully and wait for the thread."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._socket.close()

    def __enter__(self) -> ServiceThread:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

"""The audit log: one row per request with its key id, decision and reason, and the alert table.

Rows are queued by the request handlers and written by a background thread
in batches, so a request never waits for a disk write of the audit log.
:meth:`AuditLog.close` drains the queue, so a graceful shutdown keeps every
row; a killed process loses the rows of its last ``flush_interval`` seconds
at most (uploads do not depend on this: they are committed before they are
acknowledged).
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from dataclasses import astuple, dataclass
from typing import Any

from .database import ServiceDatabase

__all__ = ["AuditEntry", "AuditLog", "record_alert", "list_alerts"]

logger = logging.getLogger(__name__)

_COLUMNS = "time, key_id, client, method, path, status, decision, reason, counted, items, latency_ms"


@dataclass(frozen=True)
class AuditEntry:
    """One request as the audit log stores it.

    ``decision`` is ``accepted``, ``rejected`` or ``flagged`` (served, but an
    alert or the adversarial-input detector fired); ``counted`` says whether
    the request counted against its key's limits.
    """

    time: float
    key_id: str | None
    client: str | None
    method: str
    path: str
    status: int
    decision: str
    reason: str | None
    counted: bool
    items: int | None
    latency_ms: float


@dataclass(frozen=True)
class _FlushMarker:
    event: threading.Event


class AuditLog:
    """Queue of audit rows, written to the database by a background thread.

    Parameters
    ----------
    database : ServiceDatabase
    flush_interval : float, default 0.05
        Seconds the writer waits for more rows before it commits a batch.
    max_batch : int, default 1000
        Most rows in one transaction.
    """

    def __init__(self, database: ServiceDatabase, *, flush_interval: float = 0.05, max_batch: int = 1000) -> None:
        self.database = database
        self.flush_interval = flush_interval
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[AuditEntry | _FlushMarker | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write_loop, name="mlwarden-audit", daemon=True)
        self._thread.start()
        self._failed_rows = 0

    def record(self, entry: AuditEntry) -> None:
        """Queue one row."""
        self._queue.put(entry)

    def close(self, timeout: float = 10.0) -> None:
        """Write every queued row and stop the writer thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def flush(self, timeout: float = 5.0) -> None:
        """Block until every row queued so far is committed (tests and admin reads use it)."""
        marker = threading.Event()
        self._queue.put(_FlushMarker(marker))
        marker.wait(timeout)

    def recent(self, limit: int = 100, key_id: str | None = None) -> list[dict[str, Any]]:
        """Return the newest rows, newest first, optionally of one key."""
        if key_id is None:
            rows = self.database.read().execute("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        else:
            rows = self.database.read().execute(
                "SELECT * FROM audit WHERE key_id = ? ORDER BY id DESC LIMIT ?", (key_id, limit)
            ).fetchall()
        return [dict(row) for row in rows]

    def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            batch: list[AuditEntry] = []
            markers: list[_FlushMarker] = []
            deadline = time.monotonic() + self.flush_interval
            while True:
                if item is None:
                    stopping = True
                elif isinstance(item, _FlushMarker):
                    markers.append(item)
                else:
                    batch.append(item)
                if stopping or len(batch) >= self.max_batch:
                    break
                wait = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=max(wait, 0.0)) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
            self._write(batch)
            for marker in markers:
                marker.event.set()

    def _write(self, batch: list[AuditEntry]) -> None:
        if not batch:
            return
        try:
            with self.database.write() as connection:
                connection.executemany(
                    f"INSERT INTO audit ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [astuple(entry) for entry in batch],
                )
        except sqlite3.Error as error:
            self._failed_rows += len(batch)
            logger.error(
                "audit log: could not write %d rows (%d lost so far): %s",
                len(batch),
                self._failed_rows,
                error,
                extra={"event": "audit.write_failed", "rows": len(batch)},
            )


def record_alert(
    database: ServiceDatabase, key_id: str, kind: str, statistic: float | None, queries: int, action: str, detail: str
) -> None:
    """Store one alert (committed before this returns)."""
    with database.write(durable=True) as connection:
        connection.execute(
            "INSERT INTO alerts (time, key_id, kind, statistic, queries, action, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (time.time(), key_id, kind, statistic, queries, action, detail),
        )


def list_alerts(database: ServiceDatabase, limit: int = 100) -> list[dict[str, Any]]:
    """Return the newest alerts, newest first."""
    rows = database.read().execute("SELECT * FROM alerts ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    return [dict(row) for row in rows]

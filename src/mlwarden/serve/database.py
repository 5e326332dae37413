"""The service's SQLite database: API keys, devices, the audit log, uploads, nonces and alerts.

One file holds all the state, in WAL mode so that readers (the request
handlers, ``mlwarden keys list``) never wait for the writer. Writes go
through one connection behind a lock; each thread reads through its own
connection. Commits use ``synchronous=NORMAL``, which survives a crash of
the process; :meth:`ServiceDatabase.write` with ``durable=True`` (used for
uploads) commits with ``synchronous=FULL``, which also survives a power cut.

The file is created with mode 0600 because it holds the device secrets that
verify collector records.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from ..errors import ParameterError

__all__ = ["ServiceDatabase", "SCHEMA_VERSION"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,
    name TEXT NOT NULL,
    scopes TEXT NOT NULL,
    rate REAL NOT NULL,
    burst INTEGER NOT NULL,
    daily_quota INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'active',
    status_reason TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    key_id TEXT,
    client TEXT,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status INTEGER NOT NULL,
    decision TEXT NOT NULL,
    reason TEXT,
    counted INTEGER NOT NULL DEFAULT 0,
    items INTEGER,
    latency_ms REAL
);
CREATE INDEX IF NOT EXISTS audit_key_time ON audit (key_id, time);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    secret_hex TEXT NOT NULL,
    created REAL NOT NULL,
    revoked REAL
);
CREATE TABLE IF NOT EXISTS uploads (
    id INTEGER PRIMARY KEY,
    received REAL NOT NULL,
    key_id TEXT,
    device_id TEXT,
    nonce TEXT,
    record_time REAL,
    payload BLOB,
    payload_sha256 TEXT,
    label INTEGER,
    status TEXT NOT NULL,
    reason TEXT,
    screened REAL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS uploads_status ON uploads (status);
CREATE TABLE IF NOT EXISTS nonces (
    device_id TEXT NOT NULL,
    nonce TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (device_id, nonce)
);
CREATE INDEX IF NOT EXISTS nonces_expiry ON nonces (expires_at);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    key_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    statistic REAL,
    queries INTEGER,
    action TEXT NOT NULL,
    detail TEXT
);
"""


class ServiceDatabase:
    """The service's state in one SQLite file.

    Parameters
    ----------
    path : path-like
        The database file; created (mode 0600) with its tables when missing.
        Its folder must exist.

    Raises
    ------
    ParameterError
        The folder does not exist, or the file is not an SQLite database of
        this schema.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise ParameterError(
                f"database folder {str(self.path.parent)!r} does not exist; create it or pass another --db path",
                value=str(self.path),
            )
        if not self.path.exists():
            # Create the file with owner-only permissions before SQLite opens it.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        try:
            self._writer = self._connect()
            self._writer.execute("PRAGMA journal_mode=WAL")
            self._writer.execute("PRAGMA synchronous=NORMAL")
            version = self._writer.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise ParameterError(
                    f"database {str(self.path)!r} has schema version {version}, this mlwarden reads version "
                    f"{SCHEMA_VERSION}; use a new --db file",
                    value=version,
                )
            self._writer.executescript(_SCHEMA)
            self._writer.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as error:
            raise ParameterError(
                f"{str(self.path)!r} is not a usable SQLite database ({error}); pass another --db path",
                value=str(self.path),
            ) from None

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False, isolation_level=None)
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA busy_timeout=30000")
        return connection

    def read(self) -> sqlite3.Connection:
        """Return this thread's reading connection (autocommit, so each query sees the latest commit)."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._connect()
            self._local.connection = connection
            with self._readers_lock:
                self._readers.append(connection)
        return connection

    @contextlib.contextmanager
    def write(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """Run a write transaction; commit on success, roll back on any exception.

        Parameters
        ----------
        durable : bool, default False
            Commit with ``synchronous=FULL`` (an fsync of the WAL), so the
            transaction survives a power cut once this block returns.
        """
        with self._write_lock:
            connection = self._writer
            if durable:
                connection.execute("PRAGMA synchronous=FULL")
            try:
                connection.execute("BEGIN IMMEDIATE")
                try:
                    yield connection
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
                connection.execute("COMMIT")
            finally:
                if durable:
                    connection.execute("PRAGMA synchronous=NORMAL")

    def close(self) -> None:
        """Checkpoint the WAL into the main file and close every connection."""
        if self._closed:
            return
        self._closed = True
        with self._readers_lock:
            for connection in self._readers:
                connection.close()
            self._readers.clear()
        with self._write_lock:
            try:
                self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.OperationalError as error:
                # Another process (a `keys list`, a second server) may still read; the WAL stays valid.
                logger.warning("database %s: WAL checkpoint skipped: %s", self.path, error)
            self._writer.close()

    def __enter__(self) -> ServiceDatabase:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

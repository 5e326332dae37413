"""Stores of the nonces a record verifier has accepted, so that a replayed record is rejected.

A store only has to remember a nonce until the record carrying it would be
rejected as stale anyway, so every entry has an expiry time and stores purge
expired entries as they go. :class:`MemoryNonceStore` suits one process;
:class:`SQLiteNonceStore` survives restarts and can be shared by the workers of
one machine. Any object with the :class:`NonceStore` methods can be used.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = ["NonceStore", "MemoryNonceStore", "SQLiteNonceStore"]


@runtime_checkable
class NonceStore(Protocol):
    """The interface :class:`~mlwarden.integrity.collectors.RecordVerifier` requires of a nonce store."""

    def add_if_absent(self, device_id: str, nonce: str, expires_at: float, now: float) -> bool:
        """Remember ``(device_id, nonce)`` until ``expires_at``; return False if it is already remembered.

        Must be atomic: of two concurrent calls with the same pair, exactly one returns True.
        Entries that expired before ``now`` may be dropped.
        """
        ...


class MemoryNonceStore:
    """A thread-safe nonce store in a dict, purged of expired entries every ``purge_every`` insertions."""

    def __init__(self, purge_every: int = 1024) -> None:
        self._entries: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._purge_every = max(1, purge_every)
        self._insertions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add_if_absent(self, device_id: str, nonce: str, expires_at: float, now: float) -> bool:
        key = (device_id, nonce)
        with self._lock:
            known = self._entries.get(key)
            if known is not None and known >= now:
                return False
            self._entries[key] = expires_at
            self._insertions += 1
            if self._insertions % self._purge_every == 0:
                self._entries = {k: v for k, v in self._entries.items() if v >= now}
            return True


class SQLiteNonceStore:
    """A nonce store in an SQLite table, safe to share between threads and processes on one machine.

    Parameters
    ----------
    path : path-like
        The database file (created if missing); ``":memory:"`` for a private in-memory database.
    """

    def __init__(self, path: str | Path) -> None:
        self._connection = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute(
                "CREATE TABLE IF NOT EXISTS nonces ("
                "device_id TEXT NOT NULL, nonce TEXT NOT NULL, expires_at REAL NOT NULL, "
                "PRIMARY KEY (device_id, nonce))"
            )
            self._connection.execute("CREATE INDEX IF NOT EXISTS nonces_expiry ON nonces (expires_at)")

    def add_if_absent(self, device_id: str, nonce: str, expires_at: float, now: float) -> bool:
        with self._lock:
            connection = self._connection
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.execute("DELETE FROM nonces WHERE expires_at < ?", (now,))
                cursor = connection.execute(
                    "INSERT OR IGNORE INTO nonces (device_id, nonce, expires_at) VALUES (?, ?, ?)",
                    (device_id, nonce, expires_at),
                )
                connection.execute("COMMIT")
            except sqlite3.Error:
                connection.execute("ROLLBACK")
                raise
            return cursor.rowcount == 1

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._connection.close()

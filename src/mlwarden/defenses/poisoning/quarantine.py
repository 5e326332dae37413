"""A persistent quarantine for rejected training samples, in SQLite.

Samples that a screen, a sanitizer or a rollback rejects are kept here with
the reason, never thrown away, so that a person can review them, release
false positives and study attacks. Each record holds the sample itself (as
NumPy ``.npy`` bytes, read back without pickle), its label, the reason, the
source and batch it came from, its index there, a score and free-form
details. The store has no delete operation: releasing a record only changes its status.

The store is safe to share between threads (one connection behind a lock)
and uses SQLite's write-ahead log, so a reader process sees committed
records while a writer adds more. Its tables are named ``quarantine_*``, so
it may share a database file with other tables (the guarded service's).

Example
-------
>>> import numpy as np
>>> store = QuarantineStore(":memory:")
>>> ids = store.add(np.zeros((2, 3)), np.array([1, 2]), reason="label disagrees with the gold model", batch_id="b7")
>>> [record.reason for record in store.records()]
['label disagrees with the gold model', 'label disagrees with the gold model']
"""

from __future__ import annotations

import io
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError, IntegrityError, ParameterError

__all__ = ["QuarantineStore", "QuarantineRecord", "QUARANTINE_SCHEMA", "STATUSES"]

logger = logging.getLogger(__name__)

QUARANTINE_SCHEMA = "mlwarden.quarantine/1"
STATUSES = ("quarantined", "released")

_CREATE = """
CREATE TABLE IF NOT EXISTS quarantine_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine_samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    reason TEXT NOT NULL CHECK (length(reason) > 0),
    source TEXT,
    batch_id TEXT,
    sample_index INTEGER,
    label INTEGER,
    score REAL,
    status TEXT NOT NULL DEFAULT 'quarantined',
    status_note TEXT,
    details TEXT NOT NULL DEFAULT '{}',
    data BLOB
);
CREATE INDEX IF NOT EXISTS quarantine_samples_batch ON quarantine_samples (batch_id);
CREATE INDEX IF NOT EXISTS quarantine_samples_status ON quarantine_samples (status);
"""


@dataclass(frozen=True)
class QuarantineRecord:
    """One quarantined sample, without its data (load it with :meth:`QuarantineStore.samples`).

    ``created`` is seconds since the epoch (UTC). ``index`` is the sample's
    position in the batch or data set it came from.
    """

    id: int
    created: float
    reason: str
    source: str | None
    batch_id: str | None
    index: int | None
    label: int | None
    score: float | None
    status: str
    status_note: str | None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the record as plain data, as written by :meth:`QuarantineStore.export_jsonl`."""
        return asdict(self)


class QuarantineStore:
    """Append-only SQLite store of quarantined samples with their reasons.

    Parameters
    ----------
    path : str or Path
        Database file, created when missing; ``":memory:"`` keeps the store
        in memory (for tests: it is then not persistent).

    Raises
    ------
    IntegrityError
        The file is not a quarantine store of this schema.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            if self.path != ":memory:":
                self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.executescript(_CREATE)
            self._connection.execute("INSERT OR IGNORE INTO quarantine_meta VALUES ('schema', ?)", (QUARANTINE_SCHEMA,))
            schema = self._connection.execute("SELECT value FROM quarantine_meta WHERE key = 'schema'").fetchone()[0]
        except sqlite3.DatabaseError as error:
            raise IntegrityError(f"{self.path} is not a quarantine store: {error}", value=self.path) from None
        if schema != QUARANTINE_SCHEMA:
            raise IntegrityError(f"{self.path} has schema {schema!r}, expected {QUARANTINE_SCHEMA!r}", value=schema)

    # --- writing ----------------------------------------------------------------------

    def add(
        self,
        inputs: Any,
        labels: Any = None,
        *,
        reason: str | Sequence[str],
        source: str | None = None,
        batch_id: str | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        scores: Sequence[float] | np.ndarray | None = None,
        details: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
    ) -> list[int]:
        """Quarantine a batch of samples and return their record ids, in order.

        Parameters
        ----------
        inputs : array or tensor (N, ...)
            The samples themselves. Pass ``None`` to record only the
            metadata (when the data is stored elsewhere); then ``indices``
            is required.
        labels : array or tensor (N,), optional
        reason : str or sequence of str
            Why the samples are quarantined: one reason for all, or one per sample. Must not be empty.
        source, batch_id : str, optional
            Where the samples came from (a collector, a client) and which batch.
        indices : sequence of int, optional
            Position of each sample in its batch or data set; default 0..N-1.
        scores : sequence of float, optional
            The detector score of each sample.
        details : dict or sequence of dict, optional
            Extra JSON-serializable facts, for all samples or one per sample.

        Raises
        ------
        ParameterError
            A reason is empty, or the lengths disagree.
        """
        count = self._count_of(inputs, indices)
        reasons = [reason] * count if isinstance(reason, str) else list(reason)
        if len(reasons) != count or any(not isinstance(text, str) or not text.strip() for text in reasons):
            raise ParameterError(
                f"QuarantineStore.add: every sample needs a non-empty reason; got {len(reasons)} reasons for {count} samples",
                value=reason,
            )
        label_values = _optional_column(labels, count, "labels", int)
        score_values = _optional_column(scores, count, "scores", float)
        index_values = list(range(count)) if indices is None else [int(i) for i in np.asarray(indices).reshape(-1)]
        if len(index_values) != count:
            raise ParameterError(f"QuarantineStore.add: {len(index_values)} indices for {count} samples", value=len(index_values))
        detail_values = [details or {}] * count if details is None or isinstance(details, dict) else list(details)
        if len(detail_values) != count:
            raise ParameterError(f"QuarantineStore.add: {len(detail_values)} details for {count} samples", value=len(detail_values))
        blobs = [None] * count if inputs is None else [_to_npy(sample) for sample in _as_numpy(inputs)]
        now = time.time()
        rows = [
            (now, reasons[i].strip(), source, batch_id, index_values[i], label_values[i], score_values[i],
             json.dumps(detail_values[i], default=_plain_json), blobs[i])
            for i in range(count)
        ]
        ids: list[int] = []
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                for row in rows:
                    cursor = self._connection.execute(
                        "INSERT INTO quarantine_samples (created, reason, source, batch_id, sample_index, label, score, details, data) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        row,
                    )
                    ids.append(int(cursor.lastrowid or 0))
                self._connection.execute("COMMIT")
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
        if count:
            logger.info("quarantined %d samples of batch %s from %s: %s", count, batch_id, source, reasons[0])
        return ids

    def release(self, ids: Iterable[int], *, note: str) -> int:
        """Mark records as released (reviewed and cleared) and return how many changed; nothing is deleted."""
        if not isinstance(note, str) or not note.strip():
            raise ParameterError("QuarantineStore.release: note must say why the samples are released", value=note)
        id_list = [int(i) for i in ids]
        with self._lock:
            changed = self._connection.executemany(
                "UPDATE quarantine_samples SET status = 'released', status_note = ? WHERE id = ? AND status = 'quarantined'",
                [(note, record_id) for record_id in id_list],
            ).rowcount
        logger.info("released %d quarantined samples: %s", changed, note)
        return int(changed)

    # --- reading ----------------------------------------------------------------------

    def records(
        self,
        *,
        status: str | None = "quarantined",
        batch_id: str | None = None,
        source: str | None = None,
        reason_contains: str | None = None,
        limit: int | None = None,
    ) -> list[QuarantineRecord]:
        """Return matching records, oldest first; ``status=None`` includes released ones."""
        if status is not None and status not in STATUSES:
            raise ParameterError(f"QuarantineStore.records: status must be one of {STATUSES} or None, got {status!r}", value=status)
        clauses, values = [], []
        for column, value in (("status", status), ("batch_id", batch_id), ("source", source)):
            if value is not None:
                clauses.append(f"{column} = ?")
                values.append(value)
        if reason_contains:
            clauses.append("instr(reason, ?) > 0")
            values.append(reason_contains)
        query = "SELECT id, created, reason, source, batch_id, sample_index, label, score, status, status_note, details FROM quarantine_samples"
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        query += " ORDER BY id"
        if limit is not None:
            query += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._connection.execute(query, values).fetchall()
        return [_record(row) for row in rows]

    def count(self, status: str | None = "quarantined") -> int:
        """Return the number of records with that status (all records when None)."""
        query = "SELECT COUNT(*) FROM quarantine_samples"
        values: tuple[Any, ...] = ()
        if status is not None:
            query, values = query + " WHERE status = ?", (status,)
        with self._lock:
            return int(self._connection.execute(query, values).fetchone()[0])

    def __len__(self) -> int:
        return self.count(status=None)

    def reasons(self, status: str | None = "quarantined") -> dict[str, int]:
        """Return the number of records per reason."""
        query = "SELECT reason, COUNT(*) FROM quarantine_samples"
        values: tuple[Any, ...] = ()
        if status is not None:
            query, values = query + " WHERE status = ?", (status,)
        with self._lock:
            rows = self._connection.execute(query + " GROUP BY reason ORDER BY COUNT(*) DESC", values).fetchall()
        return {reason: int(total) for reason, total in rows}

    def samples(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Return the stored inputs (stacked, in the order of ``ids``) and labels (-1 where none).

        Raises
        ------
        DataError
            An id is unknown, or its record was stored without data.
        """
        id_list = [int(i) for i in ids]
        rows: dict[int, tuple[Any, Any]] = {}
        # Chunks keep each query under SQLite's limit on bound parameters.
        for start in range(0, len(id_list), 500):
            chunk = id_list[start : start + 500]
            placeholders = ",".join("?" * len(chunk))
            with self._lock:
                found = self._connection.execute(
                    f"SELECT id, label, data FROM quarantine_samples WHERE id IN ({placeholders})", chunk
                ).fetchall()
            rows.update({record_id: (label, blob) for record_id, label, blob in found})
        inputs, labels = [], []
        for record_id in id_list:
            if record_id not in rows or rows[record_id][1] is None:
                raise DataError(f"quarantine record {record_id} is not found or has no sample data", value=record_id)
            label, blob = rows[record_id]
            inputs.append(np.load(io.BytesIO(blob), allow_pickle=False))
            labels.append(-1 if label is None else label)
        if not inputs:
            return np.zeros((0,)), np.zeros((0,), dtype=np.int64)
        return np.stack(inputs), np.asarray(labels, dtype=np.int64)

    def export_jsonl(self, path: str | Path, *, status: str | None = None) -> Path:
        """Write one JSON line per record (metadata only) and return the path."""
        path = Path(path)
        with path.open("w") as stream:
            for record in self.records(status=status):
                stream.write(json.dumps(record.to_dict(), default=_plain_json) + "\n")
        return path

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._connection.close()

    def __enter__(self) -> QuarantineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- helpers ----------------------------------------------------------------------

    @staticmethod
    def _count_of(inputs: Any, indices: Any) -> int:
        if inputs is None:
            if indices is None:
                raise ParameterError("QuarantineStore.add: pass the samples, or their indices when inputs is None", value=None)
            return int(np.asarray(indices).reshape(-1).shape[0])
        shape = getattr(inputs, "shape", None)
        if not shape:
            raise ParameterError(
                f"QuarantineStore.add: inputs must be an array or tensor (N, ...), got {type(inputs).__name__}",
                value=type(inputs),
            )
        return int(shape[0])


def _record(row: Sequence[Any]) -> QuarantineRecord:
    """Build a record from a row of the columns selected by :meth:`QuarantineStore.records`."""
    record_id, created, reason, source, batch_id, index, label, score, status, note, details = row
    return QuarantineRecord(record_id, created, reason, source, batch_id, index, label, score, status, note, json.loads(details))


def _as_numpy(values: Any) -> np.ndarray:
    return values.detach().cpu().numpy() if hasattr(values, "detach") else np.asarray(values)


def _to_npy(sample: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(sample), allow_pickle=False)
    return buffer.getvalue()


def _optional_column(values: Any, count: int, name: str, kind: type) -> list[Any]:
    if values is None:
        return [None] * count
    array = _as_numpy(values).reshape(-1)
    if len(array) != count:
        raise ParameterError(f"QuarantineStore.add: {len(array)} {name} for {count} samples", value=len(array))
    return [kind(value) for value in array.tolist()]


def _plain_json(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)

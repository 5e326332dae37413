"""Ingest of device records into the quarantine: authenticate, decode, store, then acknowledge.

Drones send signed records (:mod:`mlwarden.integrity.collectors`) whose
payload is one labelled training image, JSON ``{"label": int, "image":
"<base64 PNG>"}`` or ``{"label": int, "inputs": [[[...]]]}`` (C, H, W). Each
record is verified (forged, altered, stale and replayed records are rejected
with the verifier's reason), its payload decoded and checked against the
served model's input, and stored in the ``uploads`` table: ``quarantined``
when it passed, ``rejected`` with its reason when it did not. Nothing is
deleted. A request's records are verified and stored in one transaction
whose nonces live in the same database, so a record is acknowledged only
after its row and its nonce are committed together: after a crash, a record
is either stored or can be sent again.

Quarantined records reach training only through
:mod:`mlwarden.serve.release`, which screens them with the poisoning
detectors and the rollback-guarded training loop.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ParameterError
from ..integrity import DeviceKey, RecordRejected, RecordVerifier, Rejection, SignedRecord
from .database import ServiceDatabase
from .payload import InputSpec, PayloadError, decode_array, decode_png, encode_png

__all__ = [
    "UPLOAD_STATES",
    "RecordOutcome",
    "Ingestor",
    "DeviceRegistry",
    "DatabaseNonceStore",
    "encode_sample",
    "decode_sample",
]

logger = logging.getLogger(__name__)

# quarantined: stored, not yet screened; released: used for training; rejected: kept with its reason.
UPLOAD_STATES = ("quarantined", "released", "rejected")


@dataclass(frozen=True)
class RecordOutcome:
    """What happened to one record of an ingest request."""

    index: int
    accepted: bool
    upload_id: int
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "accepted": self.accepted, "upload_id": self.upload_id, "reason": self.reason}


def encode_sample(image: torch.Tensor, label: int, bounds: tuple[float, float] = (0.0, 1.0)) -> bytes:
    """Return the record payload of one labelled image (C, H, W), as a drone sends it."""
    document = {"label": int(label), "image": base64.b64encode(encode_png(image, bounds)).decode("ascii")}
    return json.dumps(document).encode("utf-8")


def decode_sample(payload: bytes, spec: InputSpec, num_classes: int, max_png_bytes: int) -> tuple[torch.Tensor, int]:
    """Return ``(image (C, H, W), label)`` of a record payload; raise PayloadError (422) when invalid."""
    try:
        document = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise PayloadError(422, "payload is not JSON") from None
    if not isinstance(document, dict) or set(document) not in ({"label", "image"}, {"label", "inputs"}):
        raise PayloadError(422, 'payload must be {"label": int, "image": base64 PNG} or {"label": int, "inputs": [...]}')
    label = document["label"]
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < num_classes:
        raise PayloadError(422, f"label must be an integer class index in [0, {num_classes - 1}], got {label!r}")
    if "image" in document:
        if not isinstance(document["image"], str):
            raise PayloadError(422, "image must be a base64 string of a PNG file")
        try:
            data = base64.b64decode(document["image"], validate=True)
        except (binascii.Error, ValueError):
            raise PayloadError(422, "image is not valid base64") from None
        return decode_png(data, spec, max_png_bytes, "image"), label
    inputs = document["inputs"]
    if not isinstance(inputs, list):
        raise PayloadError(422, "inputs must be nested lists of shape (C, H, W)")
    return decode_array([inputs], spec)[0], label


class DeviceRegistry:
    """Device keys in the service database (the receiver's copy of each device's secret)."""

    def __init__(self, database: ServiceDatabase) -> None:
        self.database = database

    def add(self, key: DeviceKey) -> None:
        """Register a device; raise ParameterError if the id is taken."""
        try:
            with self.database.write(durable=True) as connection:
                connection.execute(
                    "INSERT INTO devices (device_id, secret_hex, created) VALUES (?, ?, ?)",
                    (key.device_id, key.secret.hex(), time.time()),
                )
        except sqlite3.IntegrityError:
            raise ParameterError(
                f"device {key.device_id!r} is already registered; revoke it first or choose another id",
                value=key.device_id,
            ) from None

    def revoke(self, device_id: str) -> None:
        """Stop accepting records of a device."""
        with self.database.write(durable=True) as connection:
            cursor = connection.execute(
                "UPDATE devices SET revoked = ? WHERE device_id = ? AND revoked IS NULL", (time.time(), device_id)
            )
        if cursor.rowcount == 0:
            raise ParameterError(f"no active device has id {device_id!r}", value=device_id)

    def get(self, device_id: str) -> DeviceKey | None:
        """Return the key of an active device, or None."""
        row = self.database.read().execute(
            "SELECT secret_hex FROM devices WHERE device_id = ? AND revoked IS NULL", (device_id,)
        ).fetchone()
        return None if row is None else DeviceKey(device_id, bytes.fromhex(row["secret_hex"]))

    def list(self) -> list[dict[str, Any]]:
        """Return every device without its secret."""
        rows = self.database.read().execute("SELECT device_id, created, revoked FROM devices ORDER BY created").fetchall()
        return [dict(row) for row in rows]


class DatabaseNonceStore:
    """A nonce store that writes inside the ingest transaction of the current thread.

    :meth:`bind` sets the connection of the open transaction, so a nonce is
    committed (or rolled back) with the upload row that carries it.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def bind(self, connection: sqlite3.Connection | None) -> None:
        self._local.connection = connection

    def add_if_absent(self, device_id: str, nonce: str, expires_at: float, now: float) -> bool:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            raise RuntimeError("DatabaseNonceStore used outside an ingest transaction")
        connection.execute("DELETE FROM nonces WHERE expires_at < ?", (now,))
        cursor = connection.execute(
            "INSERT OR IGNORE INTO nonces (device_id, nonce, expires_at) VALUES (?, ?, ?)", (device_id, nonce, expires_at)
        )
        return cursor.rowcount == 1


class Ingestor:
    """Verify, decode and store device records.

    Parameters
    ----------
    database : ServiceDatabase
    spec : InputSpec
        The served model's input, which every image must match.
    num_classes : int
    max_png_bytes : int
    max_age, max_skew : float
        Seconds a record stays fresh, and how far ahead a device clock may run.
    durable : bool, default True
        Commit with ``synchronous=FULL`` before acknowledging.
    """

    def __init__(
        self,
        database: ServiceDatabase,
        spec: InputSpec,
        num_classes: int,
        *,
        max_png_bytes: int = 64 * 1024,
        max_age: float = 300.0,
        max_skew: float = 30.0,
        durable: bool = True,
    ) -> None:
        self.database = database
        self.spec = spec
        self.num_classes = num_classes
        self.max_png_bytes = max_png_bytes
        self.durable = durable
        self.devices = DeviceRegistry(database)
        self.nonces = DatabaseNonceStore()
        self.verifier = RecordVerifier(self.devices.get, max_age=max_age, max_skew=max_skew, nonce_store=self.nonces)

    def ingest(self, documents: list[Any], key_id: str | None) -> list[RecordOutcome]:
        """Store each record as quarantined or rejected, commit, and return the outcomes.

        Returns only after the commit, so every outcome returned is on disk.
        """
        outcomes: list[RecordOutcome] = []
        now = time.time()
        with self.database.write(durable=self.durable) as connection:
            self.nonces.bind(connection)
            try:
                for index, document in enumerate(documents):
                    outcomes.append(self._store_one(connection, index, document, key_id, now))
            finally:
                self.nonces.bind(None)
        for outcome in outcomes:
            if outcome.accepted:
                logger.info("upload %d quarantined", outcome.upload_id, extra={"event": "ingest.accepted", "key_id": key_id, "upload_id": outcome.upload_id})
            else:
                logger.warning(
                    "upload %d rejected: %s",
                    outcome.upload_id,
                    outcome.reason,
                    extra={"event": "ingest.rejected", "key_id": key_id, "upload_id": outcome.upload_id, "reason": outcome.reason},
                )
        return outcomes

    def _store_one(
        self, connection: sqlite3.Connection, index: int, document: Any, key_id: str | None, now: float
    ) -> RecordOutcome:
        record: SignedRecord | None = None
        label: int | None = None
        try:
            if not isinstance(document, Mapping):
                raise RecordRejected(Rejection.MALFORMED, "a record must be a JSON object")
            record = SignedRecord.from_dict(document)
            self.verifier.check(record)
            try:
                _, label = decode_sample(record.payload, self.spec, self.num_classes, self.max_png_bytes)
            except PayloadError as error:
                raise _InvalidPayload(error.detail) from None
            status, reason = "quarantined", None
        except RecordRejected as rejection:
            status, reason = "rejected", f"{rejection.reason.value}: {rejection.detail}"
        except _InvalidPayload as error:
            status, reason = "rejected", f"invalid-payload: {error}"
        if record is None:
            raw = json.dumps(document, default=str).encode("utf-8")[: self.max_png_bytes * 2]
            values: tuple[Any, ...] = (now, key_id, None, None, None, raw, None, None, status, reason, now)
        else:
            values = (
                now, key_id, record.device_id, record.nonce, record.timestamp_ms / 1000.0, record.payload,
                record.payload_sha256, label, status, reason, now,
            )
        cursor = connection.execute(
            "INSERT INTO uploads (received, key_id, device_id, nonce, record_time, payload, payload_sha256, label, "
            "status, reason, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            values,
        )
        upload_id = int(cursor.lastrowid or 0)
        return RecordOutcome(index, status == "quarantined", upload_id, reason)

    def uploads(self, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Return the newest uploads (without payloads), newest first, optionally of one state."""
        query = "SELECT id, received, key_id, device_id, nonce, label, status, reason, updated FROM uploads"
        if status is None:
            rows = self.database.read().execute(query + " ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        else:
            rows = self.database.read().execute(query + " WHERE status = ? ORDER BY id DESC LIMIT ?", (status, limit)).fetchall()
        return [dict(row) for row in rows]


class _InvalidPayload(Exception):
    """An authentic record whose payload is not a usable training sample."""

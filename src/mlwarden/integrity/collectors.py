"""Authenticated collector records: device keys, per-record HMAC, and a verifier that rejects with reasons.

Each collecting device shares a secret key with the receiver. The device
signs every record with HMAC-SHA256 over a versioned, length-prefixed
encoding of its device id, a timestamp in milliseconds, a random 128-bit
nonce, and the SHA-256 of the payload (binding the digest binds the payload;
hashing first lets large payloads be streamed). The receiver's
:class:`RecordVerifier` checks, in this order, and rejects with a
:class:`Rejection` reason:

1. ``malformed``: fields missing or of the wrong form;
2. ``unknown-device``: no key for the device id;
3. ``forged``: the MAC does not verify, so the header was not made with the
   device's key (a wrong key, or a changed device id, timestamp or nonce);
4. ``altered``: the MAC verifies but the payload no longer matches the signed
   digest, so the payload was changed on the way;
5. ``stale``: the timestamp is older than ``max_age`` or further in the future
   than ``max_skew``;
6. ``replayed``: the nonce was already accepted for this device.

Only a record that passes every check has its nonce remembered, so forged
records cannot fill the nonce store. MACs are compared with
:func:`hmac.compare_digest`.

Example
-------
>>> key = DeviceKey.generate("sensor-7")
>>> record = sign_record(key, b'{"temperature": 21.5}')
>>> verifier = RecordVerifier({key.device_id: key})
>>> verifier.verify(record).accepted
True
>>> verifier.verify(record).reason
<Rejection.REPLAYED: 'replayed'>

Reference: Krawczyk, Bellare, Canetti (1997), RFC 2104, "HMAC: Keyed-Hashing
for Message Authentication". Limitations: a shared secret authenticates the
device to the receiver only; anyone holding the receiver's copy of the key can
forge records, so store device keys like passwords. Clocks of devices must be
within ``max_skew`` of the receiver's.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._validation import check_real
from ..errors import IntegrityError, ParameterError
from .nonces import MemoryNonceStore, NonceStore

__all__ = [
    "RECORD_VERSION",
    "HEADER_DEVICE",
    "HEADER_TIMESTAMP",
    "HEADER_NONCE",
    "HEADER_PAYLOAD_SHA256",
    "HEADER_SIGNATURE",
    "DeviceKey",
    "SignedRecord",
    "Rejection",
    "Verdict",
    "RecordRejected",
    "RecordVerifier",
    "sign_record",
]

logger = logging.getLogger(__name__)

RECORD_VERSION = 1
_DOMAIN = b"mlwarden.record/1"
_DEVICE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_HEX = re.compile(r"[0-9a-f]+")
_MIN_SECRET_BYTES = 32

HEADER_DEVICE = "X-Mlwarden-Device"
HEADER_TIMESTAMP = "X-Mlwarden-Timestamp"
HEADER_NONCE = "X-Mlwarden-Nonce"
HEADER_PAYLOAD_SHA256 = "X-Mlwarden-Payload-SHA256"
HEADER_SIGNATURE = "X-Mlwarden-Signature"


@dataclass(frozen=True)
class DeviceKey:
    """A collecting device's id and the secret it shares with the receiver.

    Parameters
    ----------
    device_id : str
        1 to 128 characters from ``A-Z a-z 0-9 . _ : -``.
    secret : bytes
        At least 32 bytes, from a cryptographic random source.
    """

    device_id: str
    secret: bytes

    def __post_init__(self) -> None:
        _check_device_id(self.device_id, "DeviceKey")
        if not isinstance(self.secret, bytes) or len(self.secret) < _MIN_SECRET_BYTES:
            raise ParameterError(
                f"DeviceKey: secret must be at least {_MIN_SECRET_BYTES} bytes; use DeviceKey.generate()",
                value=len(self.secret) if isinstance(self.secret, bytes) else type(self.secret).__name__,
            )

    def __repr__(self) -> str:
        return f"DeviceKey(device_id={self.device_id!r}, secret=<{len(self.secret)} bytes>)"

    @classmethod
    def generate(cls, device_id: str) -> DeviceKey:
        """Return a key with a fresh 32-byte random secret."""
        return cls(device_id, secrets.token_bytes(_MIN_SECRET_BYTES))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the key as JSON (``device_id`` and hex ``secret``) with file mode 0600."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"device_id": self.device_id, "secret": self.secret.hex()}) + "\n"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(descriptor, 0o600)
            os.write(descriptor, text.encode("ascii"))
        finally:
            os.close(descriptor)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DeviceKey:
        """Read a key written by :meth:`save`.

        Raises
        ------
        ParameterError
            If the file is missing or not a device key.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(str(data["device_id"]), bytes.fromhex(data["secret"]))
        except FileNotFoundError:
            raise ParameterError(f"DeviceKey.load: {str(path)!r} not found", value=str(path)) from None
        except (ValueError, KeyError, TypeError) as error:
            raise ParameterError(
                f"DeviceKey.load: {str(path)!r} is not a device key file ({error}); make one with "
                "`mlwarden keygen --device ID`",
                value=str(path),
            ) from None


@dataclass(frozen=True)
class SignedRecord:
    """A payload with the fields that authenticate it.

    Attributes
    ----------
    device_id : str
        The device that signed it.
    timestamp_ms : int
        Milliseconds since the Unix epoch when it was signed.
    nonce : str
        32 hex digits, random per record.
    payload_sha256 : str
        Hex SHA-256 of ``payload``, as signed.
    mac : str
        Hex HMAC-SHA256 over the other fields.
    payload : bytes
        The record's content.
    """

    device_id: str
    timestamp_ms: int
    nonce: str
    payload_sha256: str
    mac: str
    payload: bytes

    def to_dict(self) -> dict[str, Any]:
        """Return the record as JSON-ready data, with the payload in base64."""
        return {
            "version": RECORD_VERSION,
            "device_id": self.device_id,
            "timestamp_ms": self.timestamp_ms,
            "nonce": self.nonce,
            "payload_sha256": self.payload_sha256,
            "mac": self.mac,
            "payload": base64.b64encode(self.payload).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SignedRecord:
        """Parse :meth:`to_dict` output; raises :class:`RecordRejected` (``malformed``) on bad input."""
        try:
            if data.get("version", RECORD_VERSION) != RECORD_VERSION:
                raise ValueError(f"version {data.get('version')!r} is not {RECORD_VERSION}")
            payload = base64.b64decode(str(data["payload"]), validate=True)
            return cls(
                device_id=str(data["device_id"]),
                timestamp_ms=_as_int(data["timestamp_ms"]),
                nonce=str(data["nonce"]),
                payload_sha256=str(data["payload_sha256"]),
                mac=str(data["mac"]),
                payload=payload,
            )
        except (KeyError, TypeError, ValueError, binascii.Error, AttributeError) as error:
            raise RecordRejected(Rejection.MALFORMED, f"record fields are missing or invalid: {error}") from None

    def to_headers(self) -> dict[str, str]:
        """Return HTTP headers that carry the authentication fields; send ``payload`` as the body."""
        return {
            HEADER_DEVICE: self.device_id,
            HEADER_TIMESTAMP: str(self.timestamp_ms),
            HEADER_NONCE: self.nonce,
            HEADER_PAYLOAD_SHA256: self.payload_sha256,
            HEADER_SIGNATURE: self.mac,
        }

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], body: bytes) -> SignedRecord:
        """Rebuild a record from :meth:`to_headers` headers (any letter case) and the request body."""
        lower = {key.lower(): value for key, value in headers.items()}
        try:
            return cls(
                device_id=lower[HEADER_DEVICE.lower()],
                timestamp_ms=_as_int(lower[HEADER_TIMESTAMP.lower()]),
                nonce=lower[HEADER_NONCE.lower()],
                payload_sha256=lower[HEADER_PAYLOAD_SHA256.lower()],
                mac=lower[HEADER_SIGNATURE.lower()],
                payload=bytes(body),
            )
        except (KeyError, ValueError, TypeError) as error:
            raise RecordRejected(Rejection.MALFORMED, f"authentication header missing or invalid: {error}") from None


class Rejection(str, enum.Enum):
    """The reason a record was rejected."""

    MALFORMED = "malformed"
    UNKNOWN_DEVICE = "unknown-device"
    FORGED = "forged"
    ALTERED = "altered"
    STALE = "stale"
    REPLAYED = "replayed"


@dataclass(frozen=True)
class Verdict:
    """The outcome of verifying one record: accepted, or the reason and a sentence of detail."""

    accepted: bool
    reason: Rejection | None = None
    detail: str = ""
    device_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "reason": None if self.reason is None else self.reason.value,
            "detail": self.detail,
            "device_id": self.device_id,
        }


class RecordRejected(IntegrityError):
    """A collector record that failed authentication; ``reason`` names the check that failed."""

    def __init__(self, reason: Rejection, detail: str, *, device_id: str = "") -> None:
        super().__init__(f"record rejected ({reason.value}): {detail}", value=device_id or None)
        self.reason = reason
        self.detail = detail


def sign_record(
    key: DeviceKey,
    payload: bytes,
    *,
    timestamp_ms: int | None = None,
    nonce: str | None = None,
) -> SignedRecord:
    """Sign ``payload`` as device ``key.device_id``.

    Parameters
    ----------
    key : DeviceKey
        The device's key.
    payload : bytes
        The record's content.
    timestamp_ms : int, optional
        Milliseconds since the epoch; the current time by default.
    nonce : str, optional
        32 hex digits; a fresh random one by default. Pass one only in tests.

    Returns
    -------
    SignedRecord
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise ParameterError(f"sign_record: payload must be bytes, got {type(payload).__name__}; encode it first", value=type(payload).__name__)
    payload = bytes(payload)
    timestamp_ms = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    nonce = secrets.token_hex(16) if nonce is None else nonce
    digest = hashlib.sha256(payload).hexdigest()
    mac = _mac(key.secret, key.device_id, timestamp_ms, nonce, digest)
    return SignedRecord(key.device_id, timestamp_ms, nonce, digest, mac, payload)


class RecordVerifier:
    """Check signed records from known devices and reject forged, altered, stale and replayed ones.

    Parameters
    ----------
    keys : mapping of device id to DeviceKey, or callable
        The known devices; a callable gets a device id and returns its key or None
        (for example a database lookup).
    max_age : float, default 300
        Seconds a record stays acceptable after its timestamp.
    max_skew : float, default 30
        Seconds a timestamp may lie in the future (device clocks run ahead).
    nonce_store : NonceStore, optional
        Where accepted nonces are remembered; a :class:`MemoryNonceStore` by default.
    clock : callable, default time.time
        Returns the current time in seconds; tests inject a fake clock.
    """

    def __init__(
        self,
        keys: Mapping[str, DeviceKey] | Callable[[str], DeviceKey | None],
        *,
        max_age: float = 300.0,
        max_skew: float = 30.0,
        nonce_store: NonceStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_age = check_real(max_age, "max_age", "RecordVerifier", low=0.0, low_inclusive=False)
        self.max_skew = check_real(max_skew, "max_skew", "RecordVerifier", low=0.0)
        if nonce_store is not None and not isinstance(nonce_store, NonceStore):
            raise ParameterError(
                "RecordVerifier: nonce_store must have an add_if_absent(device_id, nonce, expires_at, now) method",
                value=type(nonce_store).__name__,
            )
        self.nonce_store = nonce_store if nonce_store is not None else MemoryNonceStore()
        self.clock = clock
        self._lookup = keys.get if isinstance(keys, Mapping) else keys

    def verify(self, record: SignedRecord) -> Verdict:
        """Return the verdict on ``record``; an accepted record's nonce is remembered."""
        try:
            self.check(record)
        except RecordRejected as rejection:
            logger.warning("rejected record from device %r: %s", record.device_id, rejection.message)
            return Verdict(False, rejection.reason, rejection.detail, record.device_id)
        return Verdict(True, None, "", record.device_id)

    def check(self, record: SignedRecord) -> SignedRecord:
        """Return ``record`` if it is authentic, fresh and new; raise :class:`RecordRejected` otherwise."""
        device = record.device_id
        problem = _form_problem(record)
        if problem:
            raise RecordRejected(Rejection.MALFORMED, problem, device_id=device)
        key = self._lookup(device)
        if key is None:
            raise RecordRejected(Rejection.UNKNOWN_DEVICE, f"no key for device {device!r}", device_id=device)
        expected = _mac(key.secret, device, record.timestamp_ms, record.nonce, record.payload_sha256)
        if not hmac.compare_digest(expected, record.mac):
            raise RecordRejected(Rejection.FORGED, "the MAC does not match the device's key", device_id=device)
        if not hmac.compare_digest(hashlib.sha256(record.payload).hexdigest(), record.payload_sha256):
            raise RecordRejected(Rejection.ALTERED, "the payload differs from the one the device signed", device_id=device)
        now = self.clock()
        age = now - record.timestamp_ms / 1000.0
        if age > self.max_age:
            raise RecordRejected(Rejection.STALE, f"signed {age:.1f} s ago, more than max_age={self.max_age:g} s", device_id=device)
        if -age > self.max_skew:
            raise RecordRejected(
                Rejection.STALE, f"timestamp {-age:.1f} s in the future, more than max_skew={self.max_skew:g} s", device_id=device
            )
        # Remember the nonce until the record would be stale anyway.
        expires_at = record.timestamp_ms / 1000.0 + self.max_age
        if not self.nonce_store.add_if_absent(device, record.nonce, expires_at, now):
            raise RecordRejected(Rejection.REPLAYED, f"nonce {record.nonce} was already accepted", device_id=device)
        return record


def _mac(secret: bytes, device_id: str, timestamp_ms: int, nonce: str, payload_sha256: str) -> str:
    # Length prefixes keep field boundaries unambiguous ("ab" + "c" differs from "a" + "bc").
    fields = (_DOMAIN, device_id.encode("utf-8"), str(timestamp_ms).encode("ascii"), nonce.encode("ascii"), payload_sha256.encode("ascii"))
    message = b"".join(len(part).to_bytes(4, "big") + part for part in fields)
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def _form_problem(record: SignedRecord) -> str | None:
    if not isinstance(record.device_id, str) or not _DEVICE_ID.fullmatch(record.device_id):
        return f"device id {record.device_id!r} is not 1-128 characters of A-Z a-z 0-9 . _ : -"
    if not isinstance(record.timestamp_ms, int) or isinstance(record.timestamp_ms, bool) or record.timestamp_ms < 0:
        return f"timestamp {record.timestamp_ms!r} is not a non-negative integer of milliseconds"
    if not isinstance(record.nonce, str) or len(record.nonce) != 32 or not _HEX.fullmatch(record.nonce):
        return "nonce is not 32 lowercase hex digits"
    for name in ("payload_sha256", "mac"):
        value = getattr(record, name)
        if not isinstance(value, str) or len(value) != 64 or not _HEX.fullmatch(value):
            return f"{name} is not 64 lowercase hex digits"
    if not isinstance(record.payload, bytes):
        return "payload is not bytes"
    return None


def _check_device_id(device_id: Any, owner: str) -> None:
    if not isinstance(device_id, str) or not _DEVICE_ID.fullmatch(device_id):
        raise ParameterError(
            f"{owner}: device_id must be 1-128 characters of A-Z a-z 0-9 . _ : -, got {device_id!r}", value=device_id
        )


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("timestamp is a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise ValueError(f"{value!r} is not an integer")

"""API keys: creation, hashed storage, scopes, per-key limits, revocation and authentication.

A key reads ``mlw_<key id>_<secret>``: a 12-hex-digit id, which is public and
appears in logs and the audit log, and a 256-bit random secret. Only the
SHA-256 of the secret is stored; a fast hash suffices because the secret is
random, not a password a person chose. The stored and computed hashes are
compared with :func:`hmac.compare_digest`, and a key id that does not exist
is checked against a dummy hash, so the time of a rejection does not reveal
whether the id exists.

Key states: ``active``; ``throttled`` (its rate divided by the extraction
monitor's factor); ``blocked`` (authenticates, but every request gets 403);
``revoked`` (no longer authenticates).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .._validation import check_int, check_real
from ..errors import ParameterError
from .database import ServiceDatabase

__all__ = ["SCOPES", "KEY_STATES", "ApiKey", "KeyStore", "AuthFailure", "parse_token"]

SCOPES = ("predict", "ingest", "admin")
KEY_STATES = ("active", "throttled", "blocked", "revoked")

_TOKEN = re.compile(r"mlw_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_DUMMY_HASH = hashlib.sha256(b"mlwarden: no such key").hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """One API key as stored, without its secret."""

    key_id: str
    name: str
    scopes: frozenset[str]
    rate: float
    burst: int
    daily_quota: int
    status: str
    status_reason: str | None
    created: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "name": self.name,
            "scopes": sorted(self.scopes),
            "rate": self.rate,
            "burst": self.burst,
            "daily_quota": self.daily_quota,
            "status": self.status,
            "status_reason": self.status_reason,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created)),
        }


@dataclass(frozen=True)
class AuthFailure:
    """Why a token did not authenticate: the detail goes to the server log, never to the client."""

    reason: str
    key_id: str | None = None


def parse_token(token: str) -> tuple[str, str] | None:
    """Return ``(key_id, secret)`` of a well-formed token, else None."""
    match = _TOKEN.fullmatch(token)
    return (match.group(1), match.group(2)) if match else None


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def _check_scopes(scopes: Iterable[str]) -> frozenset[str]:
    chosen = frozenset(scopes)
    unknown = sorted(chosen - set(SCOPES))
    if not chosen or unknown:
        raise ParameterError(
            f"scopes must be one or more of {', '.join(SCOPES)}, got {sorted(chosen)!r}",
            value=unknown[0] if unknown else sorted(chosen),
        )
    return chosen


class KeyStore:
    """API keys in the service database.

    Parameters
    ----------
    database : ServiceDatabase
    """

    def __init__(self, database: ServiceDatabase) -> None:
        self.database = database

    def create(
        self,
        name: str,
        scopes: Iterable[str],
        *,
        rate: float = 20.0,
        burst: int = 40,
        daily_quota: int = 100_000,
    ) -> tuple[ApiKey, str]:
        """Create a key and return it with its token, which is shown this once and never stored.

        Parameters
        ----------
        name : str
            Who or what holds the key, 1 to 100 printable characters.
        scopes : iterable of {"predict", "ingest", "admin"}
        rate : float, default 20
            Sustained requests per second (token-bucket refill rate).
        burst : int, default 40
            Requests allowed at once (token-bucket capacity).
        daily_quota : int, default 100000
            Requests per UTC day.
        """
        if not isinstance(name, str) or not 1 <= len(name) <= 100 or not name.isprintable():
            raise ParameterError(f"key name must be 1 to 100 printable characters, got {name!r}", value=name)
        chosen = _check_scopes(scopes)
        rate = check_real(rate, "rate", "keys create", low=0.0, low_inclusive=False)
        burst = check_int(burst, "burst", "keys create", low=1)
        daily_quota = check_int(daily_quota, "daily_quota", "keys create", low=1)
        now = time.time()
        for _ in range(5):
            key_id = secrets.token_hex(6)
            secret = secrets.token_urlsafe(32)
            try:
                with self.database.write(durable=True) as connection:
                    connection.execute(
                        "INSERT INTO api_keys (key_id, secret_sha256, name, scopes, rate, burst, daily_quota, status, "
                        "created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, 'active', ?, ?)",
                        (key_id, _hash_secret(secret), name, ",".join(sorted(chosen)), rate, burst, daily_quota, now, now),
                    )
            except sqlite3.IntegrityError:
                continue  # a 48-bit id collided with an existing one; draw another
            key = ApiKey(key_id, name, chosen, rate, burst, daily_quota, "active", None, now)
            return key, f"mlw_{key_id}_{secret}"
        raise RuntimeError("could not draw an unused key id in 5 tries")

    def get(self, key_id: str) -> ApiKey | None:
        """Return the key with this id, or None."""
        row = self.database.read().execute("SELECT * FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
        return None if row is None else _from_row(row)

    def list(self) -> list[ApiKey]:
        """Return every key, oldest first."""
        rows = self.database.read().execute("SELECT * FROM api_keys ORDER BY created").fetchall()
        return [_from_row(row) for row in rows]

    def set_status(self, key_id: str, status: str, reason: str | None = None) -> ApiKey:
        """Change a key's state and return the updated key.

        Raises
        ------
        ParameterError
            No key has this id, or ``status`` is not a key state.
        """
        if status not in KEY_STATES:
            raise ParameterError(f"key status must be one of {', '.join(KEY_STATES)}, got {status!r}", value=status)
        with self.database.write(durable=True) as connection:
            cursor = connection.execute(
                "UPDATE api_keys SET status = ?, status_reason = ?, updated = ? WHERE key_id = ?",
                (status, reason, time.time(), key_id),
            )
        if cursor.rowcount == 0:
            raise ParameterError(f"no API key has id {key_id!r}; list them with 'mlwarden keys list'", value=key_id)
        key = self.get(key_id)
        assert key is not None  # the update above found it
        return key

    def revoke(self, key_id: str, reason: str = "revoked by an operator") -> ApiKey:
        """Revoke a key for good; it no longer authenticates."""
        return self.set_status(key_id, "revoked", reason)

    def authenticate(self, token: str | None) -> ApiKey | AuthFailure:
        """Return the key that ``token`` proves, or why it proves none.

        A blocked key authenticates (the caller answers 403); a revoked one does not.
        """
        if not token:
            return AuthFailure("missing API key")
        parsed = parse_token(token)
        if parsed is None:
            # Compare anyway, so that malformed tokens take as long as wrong ones.
            hmac.compare_digest(_DUMMY_HASH, hashlib.sha256(token.encode("utf-8", "replace")).hexdigest())
            return AuthFailure("malformed API key")
        key_id, secret = parsed
        row = self.database.read().execute("SELECT * FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
        stored = row["secret_sha256"] if row is not None else _DUMMY_HASH
        matches = hmac.compare_digest(stored, _hash_secret(secret))
        if row is None:
            return AuthFailure("unknown key id", key_id)
        if not matches:
            return AuthFailure("wrong secret for key id", key_id)
        key = _from_row(row)
        if key.status == "revoked":
            return AuthFailure("revoked key", key_id)
        return key


def _from_row(row: sqlite3.Row) -> ApiKey:
    return ApiKey(
        key_id=row["key_id"],
        name=row["name"],
        scopes=frozenset(row["scopes"].split(",")),
        rate=float(row["rate"]),
        burst=int(row["burst"]),
        daily_quota=int(row["daily_quota"]),
        status=row["status"],
        status_reason=row["status_reason"],
        created=float(row["created"]),
    )

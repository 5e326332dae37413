"""Unauthorized access: requests without a key, with malformed keys, and guessed keys.

:func:`probe_keys` sends a bounded number of requests to a service route
that needs a key and counts the responses. A guarded service responds to
every one of them with 401 (or 429 once the client's failed authentications
pass their limit) and the same generic body, so the attacker learns nothing
about which keys exist. The report lists any request that got through and whether
the 401 bodies differed, which would leak information.

Kinds of attempts, in turn: no ``Authorization`` header, a header without a
bearer token, malformed tokens, well-formed tokens with random key ids and
secrets, and (when ``known_key_id`` is given, say from a leaked log line)
that real id with random secrets.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..._validation import check_int
from ...threat import Frequency, Goal, Knowledge, Specificity, Stage, ThreatProfile
from .flood import check_loopback_url

__all__ = ["ProbeResult", "probe_keys", "PROBE_PROFILE", "ATTEMPT_KINDS"]

logger = logging.getLogger(__name__)

PROBE_PROFILE = ThreatProfile(Goal.CONFIDENTIALITY, Stage.API, Knowledge.DECISION_BASED, Frequency.ITERATIVE, (Specificity.UNTARGETED,))

ATTEMPT_KINDS = ("no-header", "no-token", "malformed", "random-key", "known-id")


@dataclass
class ProbeResult:
    """Outcome of a key probe: status counts per kind of attempt, and what leaked."""

    attempts: int
    seconds: float
    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    bodies_401: set[str] = field(default_factory=set)

    @property
    def accepted(self) -> int:
        """Attempts that got a 2xx response: access without a valid key."""
        return sum(count for counts in self.statuses.values() for status, count in counts.items() if 200 <= status < 300)

    @property
    def rate_limited(self) -> int:
        return sum(counts.get(429, 0) for counts in self.statuses.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "seconds": round(self.seconds, 3),
            "accepted": self.accepted,
            "rate_limited": self.rate_limited,
            "distinct_401_bodies": len(self.bodies_401),
            "statuses": {kind: {str(s): c for s, c in sorted(counts.items())} for kind, counts in self.statuses.items()},
        }


def _attempt_header(kind: str, index: int, known_key_id: str | None) -> dict[str, str]:
    if kind == "no-header":
        return {}
    if kind == "no-token":
        return {"Authorization": "Bearer"}
    if kind == "malformed":
        shapes = ("Basic dXNlcjpwYXNz", "Bearer mlw_", "Bearer " + "x" * 300, "Bearer mlw_zzzzzzzzzzzz_short", "Token mlw_0")
        return {"Authorization": shapes[index % len(shapes)]}
    key_id = known_key_id if kind == "known-id" and known_key_id else secrets.token_hex(6)
    return {"Authorization": f"Bearer mlw_{key_id}_{secrets.token_urlsafe(32)}"}


def probe_keys(
    url: str,
    *,
    attempts: int = 200,
    path: str = "/v1/model",
    known_key_id: str | None = None,
    max_seconds: float = 30.0,
) -> ProbeResult:
    """Send ``attempts`` requests without a valid key, cycling through the kinds of attempts.

    Parameters
    ----------
    url : str
        A service on the loopback interface.
    attempts : int, default 200
    path : str, default "/v1/model"
        A GET route that needs a key.
    known_key_id : str, optional
        A real key id, to test guessing the secret of a known key.
    max_seconds : float, default 30
        The probe stops after this long.

    Notes
    -----
    The guessed secrets come from :mod:`secrets`, so two runs send different
    keys; the counts by status do not depend on which.
    """
    check_loopback_url(url, "probe_keys")
    attempts = check_int(attempts, "attempts", "probe_keys", low=1, high=100_000)
    kinds = [kind for kind in ATTEMPT_KINDS if kind != "known-id" or known_key_id]
    result = ProbeResult(0, 0.0, {kind: Counter() for kind in kinds})
    started = time.perf_counter()
    deadline = time.monotonic() + max_seconds
    with httpx.Client(base_url=url.rstrip("/"), timeout=10.0) as client:
        for index in range(attempts):
            if time.monotonic() > deadline:
                break
            kind = kinds[index % len(kinds)]
            try:
                response = client.get(path, headers=_attempt_header(kind, index // len(kinds), known_key_id))
                status = response.status_code
                if status == 401:
                    result.bodies_401.add(response.text)
            except httpx.TransportError:
                status = 0
            result.statuses[kind][status] += 1
            result.attempts += 1
    result.seconds = time.perf_counter() - started
    logger.info("key probe: %d attempts, %d accepted, %d rate-limited", result.attempts, result.accepted, result.rate_limited)
    return result

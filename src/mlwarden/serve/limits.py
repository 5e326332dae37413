"""Per-key rate limits (token buckets) and daily quotas.

A token bucket holds at most ``burst`` tokens and gains ``rate`` tokens per
second; each request takes one, and a request that finds the bucket empty
is told how long to wait (the ``Retry-After`` of its 429). The daily quota
counts requests per UTC day. Both count every authenticated request, valid
or not, so a key cannot flood the service with malformed requests either.

Buckets live in memory, so a restart refills them. Daily counts start from
the audit log (every counted request has a row), so a restart keeps them.
"""

from __future__ import annotations

import calendar
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .database import ServiceDatabase

__all__ = ["TokenBucket", "RateLimiter", "DailyQuota", "utc_day_start", "seconds_to_next_utc_day"]


@dataclass
class TokenBucket:
    """A token bucket; :meth:`take` returns 0 when a token was taken, else the seconds to wait."""

    rate: float
    burst: int
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """Token buckets by key, created full on first use.

    A key's rate can be divided by a factor (the extraction monitor's
    throttle); a change of the key's rate or burst resets its bucket.

    Parameters
    ----------
    clock : callable, default time.monotonic
    max_buckets : int, default 100000
        Buckets kept; beyond it the fullest ones are dropped, which only
        forgets keys that are not limited right now.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_buckets: int = 100_000) -> None:
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()
        self._clock = clock
        self._max_buckets = max_buckets

    def take(self, name: str, rate: float, burst: int) -> float:
        """Take a token for ``name``; return 0.0, or the seconds until a token is available."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(name)
            if bucket is None or bucket.rate != rate or bucket.burst != burst:
                bucket = TokenBucket(rate, burst, float(burst), now)
                if len(self._buckets) >= self._max_buckets:
                    self._drop_full(now)
                self._buckets[name] = bucket
            return bucket.take(now)

    def has_tokens(self, name: str) -> bool:
        """Return whether ``name`` could take a token now, without taking one."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(name)
            if bucket is None:
                return True
            return min(float(bucket.burst), bucket.tokens + (now - bucket.updated) * bucket.rate) >= 1.0

    def _drop_full(self, now: float) -> None:
        full = [
            name
            for name, bucket in self._buckets.items()
            if bucket.tokens + (now - bucket.updated) * bucket.rate >= bucket.burst
        ]
        for name in full or list(self._buckets)[: len(self._buckets) // 2]:
            del self._buckets[name]


def utc_day_start(now: float) -> float:
    """Return the epoch time of the start of the UTC day that contains ``now``."""
    day = time.gmtime(now)
    return float(calendar.timegm((day.tm_year, day.tm_mon, day.tm_mday, 0, 0, 0)))


def seconds_to_next_utc_day(now: float) -> int:
    """Return the whole seconds until the next UTC midnight, at least 1."""
    return max(1, math.ceil(utc_day_start(now) + 86400 - now))


class DailyQuota:
    """Requests per key and UTC day, counted in memory and loaded from the audit log at start.

    Parameters
    ----------
    database : ServiceDatabase, optional
        Where the counts of today are read from at start.
    clock : callable, default time.time
    """

    def __init__(self, database: ServiceDatabase | None = None, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._day = utc_day_start(clock())
        self._counts: dict[str, int] = {}
        if database is not None:
            rows = database.read().execute(
                "SELECT key_id, COUNT(*) AS count FROM audit WHERE counted = 1 AND time >= ? AND key_id IS NOT NULL "
                "GROUP BY key_id",
                (self._day,),
            ).fetchall()
            self._counts = {row["key_id"]: int(row["count"]) for row in rows}

    def count(self, name: str, quota: int) -> int:
        """Count one request of ``name``; return 0 if within ``quota``, else the seconds to the next UTC day."""
        now = self._clock()
        with self._lock:
            day = utc_day_start(now)
            if day != self._day:
                self._day = day
                self._counts.clear()
            used = self._counts.get(name, 0) + 1
            self._counts[name] = used
        return 0 if used <= quota else seconds_to_next_utc_day(now)

    def used(self, name: str) -> int:
        """Return the requests of ``name`` counted today."""
        with self._lock:
            return self._counts.get(name, 0)

"""A bounded request flood against a service on this machine, to check its rate limiter.

:func:`send_load` sends a fixed number of requests (at most ``max_seconds``
long) with a fixed concurrency and records each status and latency. It also
measures throughput for ``bench/serve.py``. :func:`flood` is the attack:
one key sends requests as fast as it can. A second key may send ordinary
requests at the same time, so that the report shows whether the limiter
stops the flood without hurting the other client.

Both refuse any target but the loopback interface (127.0.0.0/8, localhost,
::1): a flood is a test of one's own service, never of someone else's.

Limitations: a single Python process sends the load, so above a few
thousand requests per second the client, not the server, is the bottleneck.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..._validation import check_int, check_real
from ...errors import ParameterError
from ...threat import Frequency, Goal, Knowledge, Specificity, Stage, ThreatProfile

__all__ = ["LoadResult", "FloodResult", "send_load", "flood", "check_loopback_url", "FLOOD_PROFILE"]

logger = logging.getLogger(__name__)

FLOOD_PROFILE = ThreatProfile(Goal.AVAILABILITY, Stage.API, Knowledge.DECISION_BASED, Frequency.ITERATIVE, (Specificity.UNTARGETED,))


def check_loopback_url(url: str, owner: str) -> str:
    """Return ``url`` after checking that its host is a loopback address; raise ParameterError otherwise."""
    host = urlsplit(url).hostname or ""
    if not (host == "localhost" or host == "::1" or host.startswith("127.")):
        raise ParameterError(
            f"{owner}: the target {url!r} is not on the loopback interface; floods and probes run only against "
            "a service on this machine, such as http://127.0.0.1:8000",
            value=url,
        )
    return url


@dataclass
class LoadResult:
    """Statuses and latencies of one load run.

    Attributes
    ----------
    requests : int
        Requests sent (some may have failed to connect, status 0).
    seconds : float
        Wall time of the run.
    statuses : Counter
        Count by HTTP status (0 for a transport error).
    latencies : list of float
        Seconds per request, of the requests with a 2xx response.
    """

    requests: int
    seconds: float
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return sum(count for status, count in self.statuses.items() if 200 <= status < 300)

    @property
    def rate_limited(self) -> int:
        return self.statuses.get(429, 0)

    def throughput(self) -> float:
        """Return accepted requests per second."""
        return self.accepted / self.seconds if self.seconds > 0 else 0.0

    def latency_quantile(self, quantile: float) -> float | None:
        """Return a quantile of the accepted requests' latency in seconds, or None without any."""
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]

    def to_dict(self) -> dict[str, Any]:
        p50 = self.latency_quantile(0.5)
        p99 = self.latency_quantile(0.99)
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "statuses": {str(status): count for status, count in sorted(self.statuses.items())},
            "accepted": self.accepted,
            "rate_limited": self.rate_limited,
            "accepted_per_second": round(self.throughput(), 2),
            "p50_ms": None if p50 is None else round(p50 * 1000, 2),
            "p99_ms": None if p99 is None else round(p99 * 1000, 2),
        }


async def _load(
    url: str,
    path: str,
    headers: dict[str, str],
    body: bytes | Sequence[bytes],
    requests: int,
    concurrency: int,
    max_seconds: float,
) -> LoadResult:
    bodies = [body] if isinstance(body, bytes) else list(body)
    result = LoadResult(0, 0.0)
    deadline = time.monotonic() + max_seconds
    started = time.perf_counter()
    remaining = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30.0, limits=limits) as client:

        async def worker() -> None:
            for index in remaining:
                if time.monotonic() > deadline:
                    return
                sent = time.perf_counter()
                try:
                    response = await client.post(path, content=bodies[index % len(bodies)])
                    status = response.status_code
                except httpx.TransportError:
                    status = 0
                elapsed = time.perf_counter() - sent
                result.requests += 1
                result.statuses[status] += 1
                if 200 <= status < 300:
                    result.latencies.append(elapsed)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result


def send_load(
    url: str,
    body: bytes | Sequence[bytes],
    *,
    token: str | None = None,
    path: str = "/v1/predict",
    content_type: str = "application/json",
    requests: int = 1000,
    concurrency: int = 8,
    max_seconds: float = 30.0,
) -> LoadResult:
    """Send ``requests`` POST requests with ``concurrency`` in flight, stopping after ``max_seconds``.

    ``body`` is one request body, or several that the requests cycle through.

    Raises
    ------
    ParameterError
        The URL is not on the loopback interface, or a count is out of range.
    """
    check_loopback_url(url, "send_load")
    requests = check_int(requests, "requests", "send_load", low=1, high=1_000_000)
    concurrency = check_int(concurrency, "concurrency", "send_load", low=1, high=256)
    max_seconds = check_real(max_seconds, "max_seconds", "send_load", low=0.0, low_inclusive=False, high=3600.0)
    headers = {"content-type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return asyncio.run(_load(url.rstrip("/"), path, headers, body, requests, concurrency, max_seconds))


@dataclass
class FloodResult:
    """Outcome of a flood, with the view of an ordinary client during it."""

    flood: LoadResult
    bystander: LoadResult | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "flood": self.flood.to_dict(),
            "bystander": None if self.bystander is None else self.bystander.to_dict(),
        }


def flood(
    url: str,
    token: str | None,
    body: bytes,
    *,
    requests: int = 2000,
    concurrency: int = 16,
    max_seconds: float = 10.0,
    bystander_token: str | None = None,
    bystander_requests: int = 50,
) -> FloodResult:
    """Flood ``url`` with one key while an optional bystander key sends ordinary requests.

    Parameters
    ----------
    url : str
        A service on the loopback interface.
    token : str or None
        The flooding key (None floods without a key).
    body : bytes
        JSON prediction request sent every time (valid or malformed, as the test needs).
    requests, concurrency, max_seconds
        Bounds of the flood.
    bystander_token : str, optional
        A second key that sends ``bystander_requests`` requests, two at a time, during the flood.
    """
    check_loopback_url(url, "flood")
    logger.info("flooding %s with up to %d requests, %d at a time, for at most %g s", url, requests, concurrency, max_seconds)

    async def both() -> tuple[LoadResult, LoadResult | None]:
        attack = _load(url.rstrip("/"), "/v1/predict", _headers(token), body, requests, concurrency, max_seconds)
        if bystander_token is None:
            return await attack, None
        ordinary = _load(url.rstrip("/"), "/v1/predict", _headers(bystander_token), body, bystander_requests, 2, max_seconds)
        flood_result, bystander = await asyncio.gather(attack, ordinary)
        return flood_result, bystander

    flood_result, bystander = asyncio.run(both())
    return FloodResult(flood_result, bystander)


def _headers(token: str | None) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers

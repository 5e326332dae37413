"""Settings of the guarded model service: which guards are on, and their limits.

Every guard can be switched off on its own, so that ``mlwarden attack
--compare-guards`` can measure what each one changes. The defaults are the
guarded service that ``mlwarden serve`` runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .._validation import check_choice, check_int, check_real
from ..errors import ParameterError

__all__ = [
    "GUARDS",
    "OUTPUT_MODES",
    "MONITOR_ACTIONS",
    "OutputPolicy",
    "PayloadLimits",
    "MonitorSettings",
    "ServiceConfig",
]

# Guards that ServiceConfig.guards may hold, in the order reports list them.
GUARDS = ("auth", "rate-limit", "payload", "monitor", "hardening", "detector")

OUTPUT_MODES = ("scores", "top-k", "label")
MONITOR_ACTIONS = ("alert", "throttle", "block")


@dataclass(frozen=True)
class OutputPolicy:
    """Output hardening: the parts of a prediction that the service returns.

    Parameters
    ----------
    mode : {"scores", "top-k", "label"}, default "scores"
        All class probabilities, the ``top_k`` most likely classes with their
        probabilities, or the label alone.
    top_k : int, default 1
        Classes returned in ``top-k`` mode.
    decimals : int or None, default 4
        Probabilities are rounded to this many decimals; None keeps float32.
    """

    mode: str = "scores"
    top_k: int = 1
    decimals: int | None = 4

    def __post_init__(self) -> None:
        check_choice(self.mode, "mode", "OutputPolicy", OUTPUT_MODES)
        check_int(self.top_k, "top_k", "OutputPolicy", low=1)
        if self.decimals is not None:
            check_int(self.decimals, "decimals", "OutputPolicy", low=0, high=8)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "top_k": self.top_k, "decimals": self.decimals}


@dataclass(frozen=True)
class PayloadLimits:
    """Bounds on what one request may carry; requests over them get 413.

    Parameters
    ----------
    max_body_bytes : int, default 4 MiB
        Largest request body, checked on the declared Content-Length and on
        the bytes actually received.
    max_batch : int, default 64
        Maximum number of images in one prediction request.
    max_png_bytes : int, default 64 KiB
        Largest single PNG after base64 decoding.
    max_records : int, default 64
        Maximum number of records in one ingest request.
    """

    max_body_bytes: int = 4 * 1024 * 1024
    max_batch: int = 64
    max_png_bytes: int = 64 * 1024
    max_records: int = 64

    def __post_init__(self) -> None:
        owner = "PayloadLimits"
        check_int(self.max_body_bytes, "max_body_bytes", owner, low=1024)
        check_int(self.max_batch, "max_batch", owner, low=1)
        check_int(self.max_png_bytes, "max_png_bytes", owner, low=64)
        check_int(self.max_records, "max_records", owner, low=1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_body_bytes": self.max_body_bytes,
            "max_batch": self.max_batch,
            "max_png_bytes": self.max_png_bytes,
            "max_records": self.max_records,
        }


@dataclass(frozen=True)
class MonitorSettings:
    """Settings of the per-key extraction monitor (see :mod:`mlwarden.serve.monitor`).

    Parameters
    ----------
    threshold : float, default 0.94
        Shapiro-Wilk W below which a key's query distances are declared not
        normal, so the key is flagged. In (0, 1).
    min_distances : int, default 100
        Distances collected before the first test.
    check_every : int, default 10
        New distances between two tests.
    window : int, default 2000
        Most recent distances tested (SciPy's Shapiro-Wilk is exact up to 5000).
    max_points : int, default 1000
        Queries kept per key (as float16) in the growing sets that distances
        are measured to. Beyond it, new queries are still measured but no
        longer kept. With 28x28 images a full key takes 1.6 MB.
    log_distances : bool, default True
        Test the logarithm of the distances instead of the distances.
    repeat_distance : float, default 0.01
        A query closer than this (L2, in input units) to a kept query of its
        class is a repeat: a client's retry tells an attacker nothing new,
        so it is neither tested nor kept.
    action : {"alert", "throttle", "block"}, default "block"
        What a flag does beyond the alert: nothing, divide the key's rate by
        ``throttle_factor``, or block the key (403 until an operator unblocks it).
    throttle_factor : float, default 10
        Divisor of the key's rate after a throttle.
    max_keys : int, default 64
        Keys whose state is kept in memory; the least recently seen is
        dropped beyond it, and starts afresh when it comes back.
    """

    threshold: float = 0.94
    min_distances: int = 100
    check_every: int = 10
    window: int = 2000
    max_points: int = 1000
    log_distances: bool = True
    repeat_distance: float = 0.01
    action: str = "block"
    throttle_factor: float = 10.0
    max_keys: int = 64

    def __post_init__(self) -> None:
        owner = "MonitorSettings"
        check_real(self.threshold, "threshold", owner, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
        check_int(self.min_distances, "min_distances", owner, low=3, high=5000)
        check_int(self.check_every, "check_every", owner, low=1)
        check_int(self.window, "window", owner, low=self.min_distances, high=5000)
        check_int(self.max_points, "max_points", owner, low=10)
        check_real(self.repeat_distance, "repeat_distance", owner, low=0.0)
        check_choice(self.action, "action", owner, MONITOR_ACTIONS)
        check_real(self.throttle_factor, "throttle_factor", owner, low=1.0)
        check_int(self.max_keys, "max_keys", owner, low=1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "min_distances": self.min_distances,
            "check_every": self.check_every,
            "window": self.window,
            "log_distances": self.log_distances,
            "action": self.action,
        }


@dataclass(frozen=True)
class ServiceConfig:
    """Settings of one service instance.

    Parameters
    ----------
    guards : frozenset of str
        Guards switched on, from :data:`GUARDS`; all by default. Without
        ``auth`` every request acts as the key ``anonymous``, which has every
        scope and the default limits.
    output : OutputPolicy
        Output hardening, applied when ``hardening`` is on; without it the
        service returns every probability unrounded.
    limits : PayloadLimits
        Applied when ``payload`` is on; without it only a 256 MiB body cap remains.
    monitor : MonitorSettings
    default_rate, default_burst, default_daily_quota
        Limits of the ``anonymous`` key and of keys created without their own.
    auth_failure_rate, auth_failure_burst
        Token bucket of failed authentications per client address: once it
        is empty, that address gets 429 before its key is even checked.
    reject_flagged : bool, default False
        Reject (422) a prediction request in which the adversarial-input
        detector flags an image, instead of only logging it.
    durable_commits : bool, default True
        Commit uploads with SQLite ``synchronous=FULL``, so an acknowledged
        upload survives a power cut, not only a crash of the process.
    """

    guards: frozenset[str] = field(default_factory=lambda: frozenset(GUARDS))
    output: OutputPolicy = field(default_factory=OutputPolicy)
    limits: PayloadLimits = field(default_factory=PayloadLimits)
    monitor: MonitorSettings = field(default_factory=MonitorSettings)
    default_rate: float = 20.0
    default_burst: int = 40
    default_daily_quota: int = 100_000
    auth_failure_rate: float = 1.0
    auth_failure_burst: int = 20
    reject_flagged: bool = False
    durable_commits: bool = True

    def __post_init__(self) -> None:
        owner = "ServiceConfig"
        guards = frozenset(self.guards)
        unknown = sorted(guards - set(GUARDS))
        if unknown:
            raise ParameterError(
                f"{owner}: unknown guard {unknown[0]!r}; the guards are {', '.join(GUARDS)}", value=unknown[0]
            )
        object.__setattr__(self, "guards", guards)
        check_real(self.default_rate, "default_rate", owner, low=0.0, low_inclusive=False)
        check_int(self.default_burst, "default_burst", owner, low=1)
        check_int(self.default_daily_quota, "default_daily_quota", owner, low=1)
        check_real(self.auth_failure_rate, "auth_failure_rate", owner, low=0.0, low_inclusive=False)
        check_int(self.auth_failure_burst, "auth_failure_burst", owner, low=1)

    def has(self, guard: str) -> bool:
        """Return whether ``guard`` is switched on."""
        return guard in self.guards

    def with_guards(self, guards: set[str] | frozenset[str]) -> ServiceConfig:
        """Return a copy with exactly ``guards`` switched on."""
        return replace(self, guards=frozenset(guards))

    def to_dict(self) -> dict[str, Any]:
        return {
            "guards": [guard for guard in GUARDS if guard in self.guards],
            "output": self.output.to_dict(),
            "limits": self.limits.to_dict(),
            "monitor": self.monitor.to_dict(),
            "default_rate": self.default_rate,
            "default_burst": self.default_burst,
            "default_daily_quota": self.default_daily_quota,
            "reject_flagged": self.reject_flagged,
        }

"""Service metrics in the Prometheus text exposition format (version 0.0.4).

A few counters and one latency histogram, kept in memory and rendered by
``GET /metrics``. Written here instead of pulling in ``prometheus_client``
because the service needs only these.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

__all__ = ["ServiceMetrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    inner = ",".join(f'{name}="{_escape(value)}"' for name, value in pairs)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class ServiceMetrics:
    """The service's counters and request-latency histogram."""

    _HELP = {
        "mlwarden_requests_total": ("counter", "HTTP requests by route and status code."),
        "mlwarden_rejections_total": ("counter", "Requests rejected by a guard, by reason."),
        "mlwarden_predictions_total": ("counter", "Images classified."),
        "mlwarden_flagged_inputs_total": ("counter", "Images flagged by the adversarial-input detector."),
        "mlwarden_alerts_total": ("counter", "Extraction-monitor alerts, by action taken."),
        "mlwarden_uploads_total": ("counter", "Ingested records, by outcome."),
    }

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(lambda: defaultdict(float))
        self._bucket_counts: dict[str, list[int]] = {}
        self._latency_sum: dict[str, float] = defaultdict(float)
        self._latency_count: dict[str, int] = defaultdict(int)

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` to a counter."""
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._counters[name][key] += amount

    def observe_latency(self, route: str, seconds: float) -> None:
        """Record one request's latency for its route."""
        with self._lock:
            counts = self._bucket_counts.setdefault(route, [0] * len(_LATENCY_BUCKETS))
            index = bisect.bisect_left(_LATENCY_BUCKETS, seconds)
            if index < len(counts):
                counts[index] += 1
            self._latency_sum[route] += seconds
            self._latency_count[route] += 1

    def value(self, name: str, **labels: str) -> float:
        """Return one counter's value (0 when never incremented)."""
        with self._lock:
            return self._counters.get(name, {}).get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        """Return every metric in the Prometheus text format."""
        lines: list[str] = []
        with self._lock:
            for name, (kind, text) in self._HELP.items():
                lines.append(f"# HELP {name} {text}")
                lines.append(f"# TYPE {name} {kind}")
                for labels, value in sorted(self._counters.get(name, {}).items()):
                    lines.append(f"{name}{_labels(labels)} {value:g}")
            name = "mlwarden_request_duration_seconds"
            lines.append(f"# HELP {name} Request latency by route.")
            lines.append(f"# TYPE {name} histogram")
            for route in sorted(self._bucket_counts):
                cumulative = 0
                for bound, count in zip(_LATENCY_BUCKETS, self._bucket_counts[route]):
                    cumulative += count
                    lines.append(f"{name}_bucket{_labels((('le', f'{bound:g}'), ('route', route)))} {cumulative}")
                total = self._latency_count[route]
                lines.append(f"{name}_bucket{_labels((('le', '+Inf'), ('route', route)))} {total}")
                lines.append(f"{name}_sum{_labels((('route', route),))} {self._latency_sum[route]:.6f}")
                lines.append(f"{name}_count{_labels((('route', route),))} {total}")
        return "\n".join(lines) + "\n"

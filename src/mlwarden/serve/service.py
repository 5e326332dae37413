"""The guarded service's logic, apart from HTTP: authorization, limits, prediction, alerts.

:class:`Service` owns the state (database, key store, limiters, monitor,
metrics, audit log) and applies the guards in a fixed order to every
request:

1. addresses with too many failed authentications get 429 before their key is checked;
2. authentication: a missing, malformed, unknown, wrong or revoked key gets
   401 with a generic body, and the reason goes to the log and the audit log only;
3. the key's token bucket, then its daily quota (429 with ``Retry-After``).
   Every request that passes the bucket counts against the key, valid or not;
4. a key blocked by the extraction monitor gets 403, and so does a key
   without the route's scope;
5. payload limits and validation (413, 415, 422), done by the route;
6. the adversarial-input detector, the model, the extraction monitor, and
   output hardening.

:mod:`mlwarden.serve.app` maps these onto FastAPI routes.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ParameterError
from .audit import AuditLog, list_alerts, record_alert
from .config import PayloadLimits, ServiceConfig
from .database import ServiceDatabase
from .hardening import UNHARDENED, harden_outputs
from .ingest import Ingestor
from .keys import ApiKey, AuthFailure, KeyStore
from .limits import DailyQuota, RateLimiter
from .metrics import ServiceMetrics
from .model import ServedModel
from .monitor import ExtractionMonitor, MonitorVerdict


if TYPE_CHECKING:
    from ..defenses.evasion.base import AdversarialDetector
    from .release import GuardedTrainer, UploadScreen

__all__ = ["Service", "Principal", "GuardRejection", "ANONYMOUS", "GENERIC_UNAUTHORIZED"]

logger = logging.getLogger(__name__)

ANONYMOUS = "anonymous"

# Limits in force when the payload guard is off: only a cap that keeps one request from exhausting memory.
UNLIMITED = PayloadLimits(
    max_body_bytes=256 * 1024 * 1024, max_batch=1_000_000, max_png_bytes=256 * 1024 * 1024, max_records=1_000_000
)
GENERIC_UNAUTHORIZED = "invalid or missing API key"


class GuardRejection(Exception):
    """A request stopped by a guard.

    Attributes
    ----------
    status : int
        HTTP status.
    detail : str
        The message in the response body.
    reason : str
        The cause recorded in the log and the audit log, which may give more than ``detail``.
    headers : dict
        Extra response headers (``Retry-After``, ``WWW-Authenticate``).
    """

    def __init__(self, status: int, detail: str, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.detail = detail
        self.reason = reason
        self.headers = headers or {}


@dataclass(frozen=True)
class Principal:
    """The requesting API key: its id, scopes, limits and state."""

    key_id: str
    scopes: frozenset[str]
    rate: float
    burst: int
    daily_quota: int
    status: str = "active"

    @classmethod
    def from_key(cls, key: ApiKey) -> Principal:
        return cls(key.key_id, key.scopes, key.rate, key.burst, key.daily_quota, key.status)


class Service:
    """State and guards of one service instance.

    Parameters
    ----------
    model : ServedModel
    database : ServiceDatabase
    config : ServiceConfig, optional
    detector : AdversarialDetector, optional
        A fitted detector from :mod:`mlwarden.defenses.evasion`, consulted
        when the ``detector`` guard is on.
    screen : UploadScreen, optional
        Poisoning detectors for the quarantined uploads (``/v1/admin/uploads/screen``).
    trainer : GuardedTrainer, optional
        The rollback-guarded training loop that screened uploads are released
        to (``/v1/admin/uploads/release``), such as
        :class:`mlwarden.defenses.poisoning.IncrementalTrainer`. It must train
        the served module itself, and predictions then go through its
        ``predict``, which never reads a half-updated model.
    """

    def __init__(
        self,
        model: ServedModel,
        database: ServiceDatabase,
        config: ServiceConfig | None = None,
        *,
        detector: AdversarialDetector | None = None,
        screen: UploadScreen | None = None,
        trainer: GuardedTrainer | None = None,
    ) -> None:
        self.model = model
        self.database = database
        self.config = config or ServiceConfig()
        self.detector = detector
        self.screen = screen
        self.trainer = trainer
        if trainer is not None and getattr(trainer, "model", None) is not model.module:
            raise ParameterError(
                "the guarded trainer must train the served module itself: build it with the ServedModel's module",
                value=type(trainer).__name__,
            )
        self.keys = KeyStore(database)
        self.audit = AuditLog(database)
        self.limiter = RateLimiter()
        self.auth_failures = RateLimiter()
        self.quota = DailyQuota(database)
        self.monitor = ExtractionMonitor(self.config.monitor)
        self.metrics = ServiceMetrics()
        self.limits = self.config.limits if self.config.has("payload") else UNLIMITED
        self.ingestor = Ingestor(
            database,
            model.spec,
            model.num_classes,
            max_png_bytes=self.limits.max_png_bytes,
            durable=self.config.durable_commits,
        )
        # Status of the anonymous principal (auth off), which has no row in the key table.
        self._anonymous_status = "active"
        self._status_lock = threading.Lock()
        self._closed = False
        if self.config.has("detector") and detector is None:
            logger.warning("the detector guard is on but no detector was given; inputs are not screened")

    # --- authorization ---------------------------------------------------------------

    def authorize(self, token: str | None, scope: str, client: str | None, state: dict[str, Any]) -> Principal:
        """Apply guards 1 to 4 and return the principal; raise :class:`GuardRejection` otherwise.

        ``state`` receives ``key_id`` and ``counted`` for the audit log.
        """
        config = self.config
        limiting = config.has("rate-limit")
        if not config.has("auth"):
            principal = Principal(
                ANONYMOUS, frozenset({"predict", "ingest", "admin"}), config.default_rate, config.default_burst,
                config.default_daily_quota, self._anonymous_status,
            )
        else:
            client_name = f"client:{client or 'unknown'}"
            if limiting and not self.auth_failures.has_tokens(client_name):
                wait = self.auth_failures.take(client_name, config.auth_failure_rate, config.auth_failure_burst)
                raise GuardRejection(
                    429,
                    "too many failed authentications; retry later",
                    f"auth failures from {client or 'unknown'} over the limit",
                    {"Retry-After": str(max(1, math.ceil(wait)))},
                )
            result = self.keys.authenticate(token)
            if isinstance(result, AuthFailure):
                state["key_id"] = result.key_id
                if limiting:
                    self.auth_failures.take(client_name, config.auth_failure_rate, config.auth_failure_burst)
                raise GuardRejection(401, GENERIC_UNAUTHORIZED, result.reason, {"WWW-Authenticate": "Bearer"})
            principal = Principal.from_key(result)
        state["key_id"] = principal.key_id
        if limiting:
            rate = principal.rate
            if principal.status == "throttled":
                rate /= config.monitor.throttle_factor
            wait = self.limiter.take(principal.key_id, rate, principal.burst)
            if wait > 0:
                raise GuardRejection(
                    429, "rate limit exceeded; retry later", f"rate limit of {rate:g}/s exceeded",
                    {"Retry-After": str(max(1, math.ceil(wait)))},
                )
            state["counted"] = True
            retry_after = self.quota.count(principal.key_id, principal.daily_quota)
            if retry_after:
                raise GuardRejection(
                    429, "daily quota exceeded; retry tomorrow (UTC)", f"daily quota of {principal.daily_quota} exceeded",
                    {"Retry-After": str(retry_after)},
                )
        if principal.status == "blocked":
            raise GuardRejection(403, "this API key is blocked; contact the operator", "key blocked")
        if scope not in principal.scopes:
            raise GuardRejection(403, f"this API key lacks the {scope!r} scope", f"missing scope {scope}")
        return principal

    # --- prediction -------------------------------------------------------------------

    def predict(self, principal: Principal, inputs: torch.Tensor, state: dict[str, Any]) -> list[dict[str, Any]]:
        """Apply guard 6 to a validated batch and return the predictions to send.

        Raises
        ------
        GuardRejection
            422 when the detector flags an image and ``reject_flagged`` is set.
        """
        config = self.config
        if config.has("detector") and self.detector is not None:
            flags = self.detector.predict(inputs)
            flagged = int(flags.sum())
            if flagged:
                self.metrics.inc("mlwarden_flagged_inputs_total", flagged)
                state["decision"] = "flagged"
                state["reason"] = f"detector flagged {flagged} of {len(inputs)} images"
                logger.warning(
                    "detector flagged %d of %d images of key %s",
                    flagged,
                    len(inputs),
                    principal.key_id,
                    extra={"event": "detector.flagged", "key_id": principal.key_id, "flagged": flagged},
                )
                if config.reject_flagged:
                    raise GuardRejection(422, "input rejected by the adversarial-input detector", state["reason"])
        if self.trainer is not None:
            probabilities = torch.softmax(self.trainer.predict(inputs).to(torch.float32), dim=1)
        else:
            probabilities = self.model.probabilities(inputs)
        self.metrics.inc("mlwarden_predictions_total", len(inputs))
        if config.has("monitor"):
            if principal.status == "active" and config.monitor.action != "alert" and self.monitor.is_flagged(principal.key_id):
                # An operator set the key back to active ('mlwarden keys clear'), so its watch starts afresh.
                self.monitor.forget(principal.key_id)
            verdict = self.monitor.observe(principal.key_id, inputs, probabilities.argmax(dim=1))
            if verdict.newly_flagged:
                self._on_alert(principal, verdict)
                state["decision"] = "flagged"
                state["reason"] = f"extraction monitor flagged the key (W={verdict.statistic:.3f})"
        policy = config.output if config.has("hardening") else UNHARDENED
        return harden_outputs(probabilities, policy)

    def _on_alert(self, principal: Principal, verdict: MonitorVerdict) -> None:
        settings = self.config.monitor
        action = settings.action
        detail = (
            f"Shapiro-Wilk W={verdict.statistic:.4f} < {settings.threshold} over {verdict.distances} distances "
            f"after {verdict.queries} queries"
        )
        logger.warning(
            "extraction monitor flagged key %s: %s; action %s",
            principal.key_id,
            detail,
            action,
            extra={
                "event": "monitor.alert",
                "key_id": principal.key_id,
                "statistic": verdict.statistic,
                "queries": verdict.queries,
                "action": action,
            },
        )
        self.metrics.inc("mlwarden_alerts_total", action=action)
        record_alert(self.database, principal.key_id, "extraction", verdict.statistic, verdict.queries, action, detail)
        if action == "alert":
            return
        status = "blocked" if action == "block" else "throttled"
        if principal.key_id == ANONYMOUS:
            with self._status_lock:
                self._anonymous_status = status
        else:
            self.keys.set_status(principal.key_id, status, f"extraction monitor: {detail}")

    def clear_key(self, key_id: str) -> dict[str, Any]:
        """Set a blocked or throttled key back to active and forget its monitor state."""
        self.monitor.forget(key_id)
        if key_id == ANONYMOUS:
            with self._status_lock:
                self._anonymous_status = "active"
            return {"key_id": ANONYMOUS, "status": "active"}
        key = self.keys.get(key_id)
        if key is None or key.status == "revoked":
            raise ParameterError(f"no active API key has id {key_id!r}", value=key_id)
        return self.keys.set_status(key_id, "active", "cleared by an operator").to_dict()

    def screen_uploads(self) -> dict[str, Any]:
        """Run the poisoning screen over the unscreened quarantined uploads."""
        if self.screen is None:
            raise GuardRejection(409, "no upload screen is configured; start the service with --screen", "no screen")
        return self.screen.screen(self.database).to_dict()

    def release_uploads(self) -> dict[str, Any]:
        """Hand the screened uploads to the guarded trainer."""
        if self.screen is None or self.trainer is None:
            raise GuardRejection(409, "no upload screen and guarded trainer are configured", "no trainer")
        return self.screen.release(self.database, self.trainer).to_dict()

    def alerts(self, limit: int = 100) -> list[dict[str, Any]]:
        """Return the newest alerts."""
        return list_alerts(self.database, limit)

    # --- life cycle -------------------------------------------------------------------

    def close(self) -> None:
        """Write the queued audit rows and close the database."""
        if self._closed:
            return
        self._closed = True
        self.audit.close()
        self.database.close()

"""The FastAPI application of the guarded model service.

Routes:

- ``POST /v1/predict`` (scope ``predict``): a batch of images as JSON arrays,
  JSON base64 PNGs, or one raw PNG; returns a prediction per image as the
  output policy allows.
- ``POST /v1/ingest`` (scope ``ingest``): signed device records, as JSON
  ``{"records": [...]}`` or one record in ``X-Mlwarden-*`` headers with the
  payload as body; 200 when every record was quarantined, 422 when any was
  rejected (each with its reason). Returns after the commit.
- ``GET /v1/model`` (scope ``predict``): the input the model takes and the output policy.
- ``GET /v1/admin/...`` (scope ``admin``): audit log, alerts, monitor state,
  uploads; ``POST /v1/admin/keys/{key_id}/clear`` unblocks a key;
  ``POST /v1/admin/uploads/screen`` screens quarantined uploads with the
  poisoning detectors and ``POST /v1/admin/uploads/release`` hands those
  that passed to the rollback-guarded trainer (409 when not configured).
- ``GET /healthz``, ``GET /metrics`` (Prometheus text), ``GET /openapi.json``: no key needed.

Routes read their own body (no body parameters), so that authentication
and rate limits run before a single byte of the body is read.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..errors import MlwardenError
from ..integrity.collectors import HEADER_DEVICE, HEADER_NONCE, HEADER_PAYLOAD_SHA256, HEADER_SIGNATURE, HEADER_TIMESTAMP
from .audit import AuditEntry
from .ingest import UPLOAD_STATES
from .metrics import CONTENT_TYPE
from .payload import PayloadError, decode_images_request, decode_json, decode_png
from .service import GuardRejection, Principal, Service

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

_STATE = "mlwarden.audit"
_MAX_ADMIN_ROWS = 1000


# --- schemas (OpenAPI documentation and response shapes) ----------------------------------


class PredictRequest(BaseModel):
    """Exactly one of ``inputs`` and ``images``."""

    inputs: list[Any] | None = Field(
        None, description="Pixel values, nested lists of shape (N, C, H, W), or (N, H, W) for one channel, in the model's bounds."
    )
    images: list[str] | None = Field(None, description="Base64-encoded PNG files, one per image, of the model's size.")


class Prediction(BaseModel):
    label: int
    classes: list[int] | None = Field(None, description="Class indices, aligned with probabilities; absent when label-only.")
    probabilities: list[float] | None = None


class PredictResponse(BaseModel):
    model: str
    predictions: list[Prediction]


class IngestRequest(BaseModel):
    records: list[dict[str, Any]] = Field(description="Records signed by mlwarden.integrity.sign_record, as to_dict() writes them.")


class RecordResult(BaseModel):
    index: int
    accepted: bool
    upload_id: int
    reason: str | None = None


class IngestResponse(BaseModel):
    accepted: int
    rejected: int
    records: list[RecordResult]


class ErrorResponse(BaseModel):
    detail: str


class Health(BaseModel):
    status: str
    model: str
    sha256: str | None = Field(description="SHA-256 of the weights file loaded at start.")
    model_version: int = Field(description="Updates accepted by the guarded trainer since start; 0 without one.")
    version: str


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse} for code in codes}


# --- audit middleware ----------------------------------------------------------------------


class AuditMiddleware:
    """Record every HTTP request in the audit log and the metrics, with its decision and reason."""

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        state: dict[str, Any] = {}
        scope[_STATE] = state
        status = 500

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            elapsed = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", "unmatched")
            decision = state.get("decision") or ("accepted" if status < 400 else "rejected")
            client = scope.get("client")
            self.service.audit.record(
                AuditEntry(
                    time=time.time(),
                    key_id=state.get("key_id"),
                    client=client[0] if client else None,
                    method=scope.get("method", ""),
                    path=scope.get("path", "")[:200],
                    status=status,
                    decision=decision,
                    reason=state.get("reason"),
                    counted=bool(state.get("counted")),
                    items=state.get("items"),
                    latency_ms=elapsed * 1000.0,
                )
            )
            metrics = self.service.metrics
            metrics.inc("mlwarden_requests_total", route=route, status=str(status))
            metrics.observe_latency(route, elapsed)
            if status >= 400:
                metrics.inc("mlwarden_rejections_total", route=route, status=str(status))


class _RejectionLogLimiter:
    """Let through 10 rejection log lines per (key, status) and minute; count the rest."""

    def __init__(self, per_minute: int = 10) -> None:
        self.per_minute = per_minute
        self._windows: dict[tuple[str | None, int], tuple[float, int, int]] = {}

    def allow(self, key_id: str | None, status: int) -> tuple[bool, int]:
        """Return (whether to log, lines suppressed since the last logged one)."""
        now = time.monotonic()
        start, logged, suppressed = self._windows.get((key_id, status), (now, 0, 0))
        if now - start >= 60.0:
            start, logged = now, 0
        if logged < self.per_minute:
            self._windows[(key_id, status)] = (start, logged + 1, 0)
            return True, suppressed
        self._windows[(key_id, status)] = (start, logged, suppressed + 1)
        if len(self._windows) > 10_000:
            self._windows.clear()
        return False, 0


# --- application ---------------------------------------------------------------------------


def create_app(service: Service, *, close_on_shutdown: bool = True) -> FastAPI:
    """Return the FastAPI application serving ``service``.

    Parameters
    ----------
    service : Service
    close_on_shutdown : bool, default True
        Close the service (drain the audit log, close the database) when the server stops.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started = time.monotonic()
        yield
        # Uvicorn has stopped accepting and finished the requests in flight, so every upload is committed.
        if close_on_shutdown:
            await run_in_threadpool(service.close)
        uptime = time.monotonic() - started
        logger.info("service stopped after %.1f s", uptime, extra={"event": "service.stop", "uptime_s": round(uptime, 3)})

    app = FastAPI(
        title="mlwarden guarded model service",
        version=__version__,
        description="Predictions and data ingest behind API keys, rate limits, payload limits, an extraction "
        "monitor and output hardening.",
        lifespan=lifespan,
    )
    app.add_middleware(AuditMiddleware, service=service)
    bearer = HTTPBearer(auto_error=False, description="An API key made by 'mlwarden keys create'.")
    log_limiter = _RejectionLogLimiter()

    def guard(scope_name: str) -> Callable[..., Awaitable[Principal]]:
        async def authorize(
            request: Request, credentials: HTTPAuthorizationCredentials | None = Security(bearer)
        ) -> Principal:
            token = credentials.credentials if credentials is not None else None
            client = request.client.host if request.client else None
            return service.authorize(token, scope_name, client, _state(request))

        return authorize

    def reject(request: Request, status: int, detail: str, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
        state = _state(request)
        state["decision"] = "rejected"
        state["reason"] = reason
        key_id = state.get("key_id")
        allowed, suppressed = log_limiter.allow(key_id, status)
        if allowed:
            logger.warning(
                "rejected %s %s with %d: %s%s",
                request.method,
                request.url.path,
                status,
                reason,
                f" ({suppressed} similar rejections not logged)" if suppressed else "",
                extra={
                    "event": "request.rejected",
                    "status": status,
                    "key_id": key_id,
                    "reason": reason,
                    "path": request.url.path,
                    "client": request.client.host if request.client else None,
                },
            )
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)

    @app.exception_handler(GuardRejection)
    async def on_guard_rejection(request: Request, error: GuardRejection) -> JSONResponse:
        return reject(request, error.status, error.detail, error.reason, error.headers)

    @app.exception_handler(PayloadError)
    async def on_payload_error(request: Request, error: PayloadError) -> JSONResponse:
        return reject(request, error.status, error.detail, error.reason)

    @app.exception_handler(MlwardenError)
    async def on_user_error(request: Request, error: MlwardenError) -> JSONResponse:
        return reject(request, 400, error.message, error.message)

    # --- public routes ----------------------------------------------------------------

    @app.get("/healthz", response_model=Health, tags=["operations"])
    async def healthz() -> dict[str, Any]:
        """Report that the service is up, with the hash of the model it serves."""
        version = getattr(service.trainer, "version", 0)
        return {
            "status": "ok",
            "model": service.model.name,
            "sha256": service.model.sha256,
            "model_version": version,
            "version": __version__,
        }

    @app.get("/metrics", response_class=PlainTextResponse, tags=["operations"])
    async def metrics() -> PlainTextResponse:
        """Return the service metrics in the Prometheus text format."""
        return PlainTextResponse(service.metrics.render(), media_type=CONTENT_TYPE)

    # --- prediction -------------------------------------------------------------------

    predict_body = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": PredictRequest.model_json_schema()},
                "image/png": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    }

    @app.post(
        "/v1/predict",
        response_model=None,
        responses={200: {"model": PredictResponse}, **_errors(401, 403, 413, 415, 422, 429)},
        openapi_extra=predict_body,
        tags=["model"],
    )
    async def predict(request: Request, principal: Principal = Depends(guard("predict"))) -> JSONResponse:
        """Classify a batch of images."""
        state = _state(request)
        limits = service.limits
        body = await _read_body(request, limits.max_body_bytes)
        media = _media_type(request)
        spec = service.model.spec

        def decode_and_predict() -> list[dict[str, Any]]:
            if media == "application/json":
                inputs = decode_images_request(decode_json(body), spec, limits.max_batch, limits.max_png_bytes)
            elif media == "image/png":
                inputs = decode_png(body, spec, limits.max_png_bytes).unsqueeze(0)
            else:
                raise PayloadError(415, "send application/json or image/png", f"unsupported content type {media!r}")
            state["items"] = len(inputs)
            return service.predict(principal, inputs, state)

        predictions = await run_in_threadpool(decode_and_predict)
        return JSONResponse({"model": service.model.name, "predictions": predictions})

    @app.get("/v1/model", tags=["model"], responses=_errors(401, 403, 429))
    async def model_info(principal: Principal = Depends(guard("predict"))) -> dict[str, Any]:
        """Describe the input the model takes and what predictions reveal."""
        config = service.config
        output = config.output.to_dict() if config.has("hardening") else {"mode": "scores", "top_k": None, "decimals": None}
        return {**service.model.describe(), "output": output, "max_batch": service.limits.max_batch}

    # --- ingest -----------------------------------------------------------------------

    ingest_body = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": IngestRequest.model_json_schema()},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    }

    @app.post(
        "/v1/ingest",
        response_model=None,
        responses={200: {"model": IngestResponse}, 422: {"model": IngestResponse}, **_errors(401, 403, 413, 415, 429)},
        openapi_extra=ingest_body,
        tags=["data"],
    )
    async def ingest(request: Request, principal: Principal = Depends(guard("ingest"))) -> JSONResponse:
        """Store signed device records in the quarantine and respond only after the commit."""
        state = _state(request)
        limits = service.limits
        body = await _read_body(request, limits.max_body_bytes)
        media = _media_type(request)
        if media == "application/json":
            document = decode_json(body)
            if not isinstance(document, dict) or set(document) != {"records"} or not isinstance(document["records"], list):
                raise PayloadError(422, 'the body must be {"records": [signed records]}')
            records = document["records"]
            if not records:
                raise PayloadError(422, '"records" must not be empty')
        elif media == "application/octet-stream":
            records = [_record_from_headers(request.headers, body)]
        else:
            raise PayloadError(415, "send application/json or application/octet-stream", f"unsupported content type {media!r}")
        if len(records) > limits.max_records:
            raise PayloadError(413, f"{len(records)} records exceed the limit of {limits.max_records} per request")
        state["items"] = len(records)
        outcomes = await run_in_threadpool(service.ingestor.ingest, records, principal.key_id)
        accepted = sum(outcome.accepted for outcome in outcomes)
        rejected = len(outcomes) - accepted
        service.metrics.inc("mlwarden_uploads_total", accepted, outcome="quarantined")
        service.metrics.inc("mlwarden_uploads_total", rejected, outcome="rejected")
        content = {"accepted": accepted, "rejected": rejected, "records": [outcome.to_dict() for outcome in outcomes]}
        if rejected:
            state["decision"] = "rejected"
            state["reason"] = "; ".join(f"record {o.index}: {o.reason}" for o in outcomes if not o.accepted)[:500]
            return JSONResponse(content, status_code=422)
        return JSONResponse(content)

    # --- administration -----------------------------------------------------------------

    admin = guard("admin")

    @app.get("/v1/admin/audit", tags=["admin"], responses=_errors(401, 403, 429))
    async def audit(
        principal: Principal = Depends(admin),
        limit: int = Query(100, ge=1, le=_MAX_ADMIN_ROWS),
        key_id: str | None = Query(None, max_length=64),
    ) -> list[dict[str, Any]]:
        """Return the newest audit rows, newest first."""
        await run_in_threadpool(service.audit.flush)
        return service.audit.recent(limit, key_id)

    @app.get("/v1/admin/alerts", tags=["admin"], responses=_errors(401, 403, 429))
    async def alerts(
        principal: Principal = Depends(admin), limit: int = Query(100, ge=1, le=_MAX_ADMIN_ROWS)
    ) -> list[dict[str, Any]]:
        """Return the newest extraction-monitor alerts."""
        return service.alerts(limit)

    @app.get("/v1/admin/monitor", tags=["admin"], responses=_errors(401, 403, 429))
    async def monitor(principal: Principal = Depends(admin)) -> list[dict[str, Any]]:
        """Return the extraction monitor's state of every key it follows."""
        return service.monitor.snapshot()

    @app.get("/v1/admin/uploads", tags=["admin"], responses=_errors(401, 403, 429))
    async def uploads(
        principal: Principal = Depends(admin),
        status: str | None = Query(None, pattern="^(" + "|".join(UPLOAD_STATES) + ")$"),
        limit: int = Query(100, ge=1, le=_MAX_ADMIN_ROWS),
    ) -> list[dict[str, Any]]:
        """Return the newest uploads with their state and reason (payloads omitted)."""
        return service.ingestor.uploads(status, limit)

    @app.post("/v1/admin/uploads/screen", tags=["admin"], responses=_errors(401, 403, 409, 429))
    async def screen_uploads(principal: Principal = Depends(admin)) -> dict[str, Any]:
        """Screen the unscreened quarantined uploads with the poisoning detectors."""
        return await run_in_threadpool(service.screen_uploads)

    @app.post("/v1/admin/uploads/release", tags=["admin"], responses=_errors(401, 403, 409, 429))
    async def release_uploads(principal: Principal = Depends(admin)) -> dict[str, Any]:
        """Hand the screened uploads to the rollback-guarded trainer."""
        return await run_in_threadpool(service.release_uploads)

    @app.post("/v1/admin/keys/{key_id}/clear", tags=["admin"], responses=_errors(400, 401, 403, 429))
    async def clear_key(key_id: str, principal: Principal = Depends(admin)) -> dict[str, Any]:
        """Set a key blocked or throttled by the extraction monitor back to active."""
        return await run_in_threadpool(service.clear_key, key_id)

    return app


def _state(request: Request) -> dict[str, Any]:
    state = request.scope.get(_STATE)
    if state is None:
        state = request.scope[_STATE] = {}
    return state


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _read_body(request: Request, limit: int) -> bytes:
    """Return the body, raising PayloadError (413) as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise PayloadError(400, "invalid Content-Length header")
        if int(declared) > limit:
            raise PayloadError(413, f"body of {declared} bytes exceeds the limit of {limit}")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadError(413, f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _record_from_headers(headers: Any, body: bytes) -> dict[str, Any]:
    """Turn one record sent as X-Mlwarden-* headers into the JSON form, so both forms take one path."""
    fields = {
        "device_id": HEADER_DEVICE,
        "timestamp_ms": HEADER_TIMESTAMP,
        "nonce": HEADER_NONCE,
        "payload_sha256": HEADER_PAYLOAD_SHA256,
        "mac": HEADER_SIGNATURE,
    }
    document: dict[str, Any] = {name: headers[header] for name, header in fields.items() if header in headers}
    document["payload"] = base64.b64encode(body).decode("ascii")
    return document

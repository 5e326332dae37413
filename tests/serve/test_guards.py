"""Guards of the running service: authentication, scopes, rate limits, quotas, payload limits, hardening."""

from __future__ import annotations

import base64
import json
import struct
import zlib

import httpx
import pytest
import torch

from mlwarden.serve import OutputPolicy, PayloadLimits, ServiceConfig
from mlwarden.serve.payload import encode_png
from mlwarden.serve.service import GENERIC_UNAUTHORIZED

from .conftest import RunningService


def _inputs(images: torch.Tensor) -> dict[str, list[float]]:
    return {"inputs": images.tolist()}


def _audit(running: RunningService, limit: int = 50) -> list[dict[str, object]]:
    running.service.audit.flush()
    return running.service.audit.recent(limit)


# --- authentication and scopes ---------------------------------------------------------------


def test_requests_without_valid_key_get_generic_401(shared_service: RunningService, small_batch: tuple) -> None:
    images, _ = small_batch
    revoked = shared_service.key("predict")
    shared_service.service.keys.revoke(revoked.split("_")[1])
    valid = shared_service.key("predict")
    key_id = valid.split("_")[1]
    wrong_secret = f"mlw_{key_id}_{'A' * 43}"
    cases = {
        "missing": None,
        "malformed": "not-a-key",
        "unknown id": f"mlw_{'0' * 12}_{'B' * 43}",
        "wrong secret": wrong_secret,
        "revoked": revoked,
    }
    for name, token in cases.items():
        with shared_service.client(token) as client:
            response = client.post("/v1/predict", json=_inputs(images[:1]))
        assert response.status_code == 401, name
        assert response.json() == {"detail": GENERIC_UNAUTHORIZED}, name
        assert response.headers["www-authenticate"] == "Bearer", name
    reasons = {row["reason"] for row in _audit(shared_service) if row["status"] == 401}
    assert {"missing API key", "malformed API key", "unknown key id", "wrong secret for key id", "revoked key"} <= reasons


def test_wrong_scope_gets_403(shared_service: RunningService, small_batch: tuple) -> None:
    images, _ = small_batch
    ingest_only = shared_service.key("ingest")
    with shared_service.client(ingest_only) as client:
        response = client.post("/v1/predict", json=_inputs(images[:1]))
        assert response.status_code == 403
        assert "predict" in response.json()["detail"]
        assert client.get("/v1/admin/audit").status_code == 403
    with shared_service.client(shared_service.key("predict")) as client:
        assert client.post("/v1/ingest", json={"records": []}).status_code == 403


def test_valid_key_gets_predictions(shared_service: RunningService, small_batch: tuple, lenet: torch.nn.Module) -> None:
    images, _ = small_batch
    with shared_service.client(shared_service.key("predict")) as client:
        response = client.post("/v1/predict", json=_inputs(images[:8]))
    assert response.status_code == 200
    labels = [prediction["label"] for prediction in response.json()["predictions"]]
    with torch.no_grad():
        expected = lenet(images[:8]).argmax(1).tolist()
    assert labels == expected


# --- rate limits and quotas -------------------------------------------------------------------


def test_key_over_rate_gets_429_others_unaffected(shared_service: RunningService, small_batch: tuple) -> None:
    images, _ = small_batch
    slow = shared_service.key("predict", rate=0.01, burst=3)
    other = shared_service.key("predict", rate=0.01, burst=3)
    with shared_service.client(slow) as client:
        statuses = [client.post("/v1/predict", json=_inputs(images[:1])).status_code for _ in range(3)]
        limited = client.post("/v1/predict", json=_inputs(images[:1]))
    assert statuses == [200, 200, 200]
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    with shared_service.client(other) as client:
        assert client.post("/v1/predict", json=_inputs(images[:1])).status_code == 200


def test_malformed_requests_count_against_rate(shared_service: RunningService, small_batch: tuple) -> None:
    images, _ = small_batch
    token = shared_service.key("predict", rate=0.01, burst=3)
    with shared_service.client(token) as client:
        malformed = [client.post("/v1/predict", content=b"{not json", headers={"content-type": "application/json"}) for _ in range(3)]
        valid = client.post("/v1/predict", json=_inputs(images[:1]))
    assert [response.status_code for response in malformed] == [422, 422, 422]
    assert valid.status_code == 429


def test_daily_quota_gets_429_until_next_day(shared_service: RunningService, small_batch: tuple) -> None:
    images, _ = small_batch
    token = shared_service.key("predict", daily_quota=2)
    with shared_service.client(token) as client:
        statuses = [client.post("/v1/predict", json=_inputs(images[:1])).status_code for _ in range(3)]
        last = client.post("/v1/predict", json=_inputs(images[:1]))
    assert statuses == [200, 200, 429]
    assert 1 <= int(last.headers["retry-after"]) <= 86400
    assert "quota" in last.json()["detail"]


def test_repeated_auth_failures_get_429(start_service, small_batch: tuple) -> None:
    running = start_service(ServiceConfig(auth_failure_burst=5, auth_failure_rate=0.01))
    with running.client(f"mlw_{'0' * 12}_{'C' * 43}") as client:
        statuses = [client.get("/v1/model").status_code for _ in range(7)]
    assert statuses[:5] == [401] * 5
    assert statuses[5:] == [429, 429]


# --- payload limits and validation ------------------------------------------------------------


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a size, followed by a tiny valid IDAT (a decompression-bomb shape)."""
    signature = b"\x89PNG\r\n\x1a\n"

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return signature + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def test_oversized_and_malformed_inputs_get_4xx(start_service, small_batch: tuple) -> None:
    images, _ = small_batch
    running = start_service(ServiceConfig(limits=PayloadLimits(max_body_bytes=512 * 1024, max_batch=16)))
    token = running.key("predict")
    good_png = base64.b64encode(encode_png(images[0])).decode()
    cases = {
        "body over limit": (413, {"content": b"x" * (600 * 1024), "headers": {"content-type": "application/json"}}),
        "batch over limit": (413, {"json": _inputs(images[:17])}),
        "not JSON": (422, {"content": b"\x00\xff", "headers": {"content-type": "application/json"}}),
        "NaN": (422, {"content": b'{"inputs": [[[NaN]]]}', "headers": {"content-type": "application/json"}}),
        "wrong shape": (422, {"json": {"inputs": torch.rand(2, 1, 27, 28).tolist()}}),
        "ragged": (422, {"json": {"inputs": [[[0.5] * 28] * 28, [[0.5] * 27] * 28]}}),
        "strings": (422, {"json": {"inputs": [[["0.5"] * 28] * 28]}}),
        "out of range": (422, {"json": _inputs(images[:1] * 3)}),
        "empty batch": (422, {"json": {"inputs": []}}),
        "both fields": (422, {"json": {"inputs": images[:1].tolist(), "images": [good_png]}}),
        "unknown field": (422, {"json": {"pixels": []}}),
        "not base64": (422, {"json": {"images": ["***"]}}),
        "not PNG": (422, {"json": {"images": [base64.b64encode(b"GIF89a" + b"\x00" * 40).decode()]}}),
        "PNG claims huge size": (422, {"json": {"images": [base64.b64encode(_png_header_only(50000, 50000)).decode()]}}),
        "truncated PNG": (422, {"content": encode_png(images[0])[:60], "headers": {"content-type": "image/png"}}),
        "wrong content type": (415, {"content": b"abc", "headers": {"content-type": "text/plain"}}),
    }
    with running.client(token) as client:
        for name, (status, request) in cases.items():
            response = client.post("/v1/predict", **request)
            assert response.status_code == status, f"{name}: {response.status_code} {response.text[:200]}"
            assert "detail" in response.json(), name
        assert httpx.get(f"{running.url}/healthz").status_code == 200
        assert client.post("/v1/predict", json=_inputs(images[:2])).status_code == 200


def test_deeply_nested_json_gets_422(shared_service: RunningService, caplog: pytest.LogCaptureFixture) -> None:
    body = b'{"inputs":' + b"[" * 5000 + b"]" * 5000 + b"}"
    token = shared_service.key("predict", "ingest")
    with caplog.at_level("WARNING"), shared_service.client(token) as client:
        for path in ("/v1/predict", "/v1/ingest"):
            response = client.post(path, content=body, headers={"content-type": "application/json"})
            assert response.status_code == 422, f"{path}: {response.status_code} {response.text[:200]}"
            assert "nests" in response.json()["detail"]
    rejections = [record for record in caplog.records if getattr(record, "event", None) == "request.rejected"]
    assert len(rejections) == 2
    assert all("nested too deeply" in record.getMessage() for record in rejections)
    assert [record.getMessage() for record in caplog.records if record.exc_info] == []


def test_png_inputs_match_array_inputs(shared_service: RunningService, small_batch: tuple) -> None:
    images, _ = small_batch
    with shared_service.client(shared_service.key("predict")) as client:
        arrays = client.post("/v1/predict", json=_inputs(images[:4])).json()["predictions"]
        encoded = [base64.b64encode(encode_png(image)).decode() for image in images[:4]]
        pngs = client.post("/v1/predict", json={"images": encoded}).json()["predictions"]
        raw = client.post("/v1/predict", content=encode_png(images[0]), headers={"content-type": "image/png"})
    assert [p["label"] for p in pngs] == [p["label"] for p in arrays]
    assert raw.status_code == 200
    assert raw.json()["predictions"][0]["label"] == arrays[0]["label"]


# --- output hardening --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "check"),
    [
        (OutputPolicy(mode="label"), lambda p: set(p) == {"label"}),
        (OutputPolicy(mode="top-k", top_k=2, decimals=2), lambda p: len(p["classes"]) == 2 and p["classes"][0] == p["label"]),
        (OutputPolicy(mode="scores", decimals=1), lambda p: all(round(v, 1) == v for v in p["probabilities"])),
    ],
    ids=["label-only", "top-2", "rounded"],
)
def test_output_hardening(start_service, small_batch: tuple, policy: OutputPolicy, check) -> None:
    images, _ = small_batch
    running = start_service(ServiceConfig(output=policy))
    with running.client(running.key("predict")) as client:
        predictions = client.post("/v1/predict", json=_inputs(images[:4])).json()["predictions"]
    assert len(predictions) == 4
    assert all(check(prediction) for prediction in predictions)


def test_hardening_off_returns_every_probability(start_service, small_batch: tuple) -> None:
    images, _ = small_batch
    running = start_service(ServiceConfig(output=OutputPolicy(mode="label")).with_guards({"auth"}))
    with running.client(running.key("predict")) as client:
        prediction = client.post("/v1/predict", json=_inputs(images[:1])).json()["predictions"][0]
    assert len(prediction["probabilities"]) == 10
    assert abs(sum(prediction["probabilities"]) - 1.0) < 1e-5


# --- operations -------------------------------------------------------------------------------


def test_audit_log_records_every_request(shared_service: RunningService, small_batch: tuple) -> None:
    images, _ = small_batch
    token = shared_service.key("predict")
    key_id = token.split("_")[1]
    with shared_service.client(token) as client:
        client.post("/v1/predict", json=_inputs(images[:3]))
        client.post("/v1/predict", json={"inputs": []})
    shared_service.service.audit.flush()
    rows = shared_service.service.audit.recent(10, key_id)
    assert [(row["status"], row["decision"]) for row in rows] == [(422, "rejected"), (200, "accepted")]
    assert rows[0]["reason"] and "non-empty" in rows[0]["reason"]
    assert rows[1]["items"] == 3
    assert all(row["counted"] == 1 for row in rows)


def test_metrics_in_prometheus_text_format(shared_service: RunningService, small_batch: tuple) -> None:
    images, _ = small_batch
    with shared_service.client(shared_service.key("predict")) as client:
        client.post("/v1/predict", json=_inputs(images[:2]))
    response = httpx.get(f"{shared_service.url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = [line for line in response.text.splitlines() if line and not line.startswith("#")]
    samples = dict(line.rsplit(" ", 1) for line in lines)
    assert float(samples['mlwarden_requests_total{route="/v1/predict",status="200"}']) >= 1
    assert float(samples["mlwarden_predictions_total"]) >= 2
    assert all(float(value) >= 0 for value in samples.values())


def test_openapi_schema_lists_routes_and_bearer(shared_service: RunningService) -> None:
    schema = httpx.get(f"{shared_service.url}/openapi.json").json()
    assert {"/v1/predict", "/v1/ingest", "/healthz", "/metrics", "/v1/model"} <= set(schema["paths"])
    schemes = schema["components"]["securitySchemes"]
    assert any(scheme.get("scheme") == "bearer" for scheme in schemes.values())
    body = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"application/json", "image/png"} <= set(body)
    json.dumps(schema)

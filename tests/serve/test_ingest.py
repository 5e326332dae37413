"""Ingest of signed device records: quarantine, rejections with reasons, replay, durability under SIGKILL."""

from __future__ import annotations

import dataclasses
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from mlwarden.integrity import DeviceKey, sign_record
from mlwarden.serve.ingest import DeviceRegistry, encode_sample

from .conftest import RunningService, create_key, start_serve_process


@pytest.fixture
def drone(shared_service: RunningService) -> DeviceKey:
    key = DeviceKey.generate(f"drone-{time.monotonic_ns()}")
    DeviceRegistry(shared_service.service.database).add(key)
    return key


def _uploads(running: RunningService) -> dict[int, sqlite3.Row]:
    rows = running.service.database.read().execute("SELECT * FROM uploads").fetchall()
    return {row["id"]: row for row in rows}


def test_valid_record_is_quarantined(shared_service: RunningService, drone: DeviceKey, small_batch: tuple) -> None:
    images, labels = small_batch
    record = sign_record(drone, encode_sample(images[0], int(labels[0])))
    with shared_service.client(shared_service.key("ingest")) as client:
        response = client.post("/v1/ingest", json={"records": [record.to_dict()]})
    assert response.status_code == 200
    body = response.json()
    assert body["accepted"] == 1
    row = _uploads(shared_service)[body["records"][0]["upload_id"]]
    assert row["status"] == "quarantined"
    assert row["device_id"] == drone.device_id
    assert row["label"] == int(labels[0])


def test_replayed_record_is_rejected(shared_service: RunningService, drone: DeviceKey, small_batch: tuple) -> None:
    images, labels = small_batch
    record = sign_record(drone, encode_sample(images[1], int(labels[1])))
    with shared_service.client(shared_service.key("ingest")) as client:
        first = client.post("/v1/ingest", json={"records": [record.to_dict()]})
        replay = client.post("/v1/ingest", json={"records": [record.to_dict()]})
    assert first.status_code == 200
    assert replay.status_code == 422
    outcome = replay.json()["records"][0]
    assert outcome["accepted"] is False
    assert outcome["reason"].startswith("replayed")
    # The replay is kept as evidence, with its reason; nothing is deleted.
    assert _uploads(shared_service)[outcome["upload_id"]]["status"] == "rejected"


def test_forged_altered_stale_records_rejected(shared_service: RunningService, drone: DeviceKey, small_batch: tuple) -> None:
    images, labels = small_batch
    payload = encode_sample(images[2], int(labels[2]))
    impostor = DeviceKey(drone.device_id, b"\x01" * 32)
    altered = dataclasses.replace(sign_record(drone, payload), payload=encode_sample(images[2], (int(labels[2]) + 1) % 10))
    cases = {
        "forged": sign_record(impostor, payload),
        "altered": altered,
        "stale": sign_record(drone, payload, timestamp_ms=int((time.time() - 3600) * 1000)),
        "unknown-device": sign_record(DeviceKey.generate("stranger"), payload),
        "invalid-payload": sign_record(drone, b'{"label": 99, "inputs": []}'),
    }
    with shared_service.client(shared_service.key("ingest")) as client:
        response = client.post("/v1/ingest", json={"records": [record.to_dict() for record in cases.values()]})
    assert response.status_code == 422
    outcomes = response.json()["records"]
    assert [outcome["accepted"] for outcome in outcomes] == [False] * len(cases)
    uploads = _uploads(shared_service)
    for (name, _), outcome in zip(cases.items(), outcomes):
        assert outcome["reason"].startswith(name), outcome
        assert uploads[outcome["upload_id"]]["reason"] == outcome["reason"]


def test_record_in_headers_is_accepted(shared_service: RunningService, drone: DeviceKey, small_batch: tuple) -> None:
    images, labels = small_batch
    record = sign_record(drone, encode_sample(images[3], int(labels[3])))
    headers = {**record.to_headers(), "content-type": "application/octet-stream"}
    with shared_service.client(shared_service.key("ingest")) as client:
        response = client.post("/v1/ingest", content=record.payload, headers=headers)
        missing = client.post("/v1/ingest", content=record.payload, headers={"content-type": "application/octet-stream"})
    assert response.status_code == 200
    assert missing.status_code == 422
    assert missing.json()["records"][0]["reason"].startswith("malformed")


def test_malformed_ingest_bodies_get_4xx(shared_service: RunningService) -> None:
    with shared_service.client(shared_service.key("ingest")) as client:
        assert client.post("/v1/ingest", json={"records": []}).status_code == 422
        assert client.post("/v1/ingest", json={"items": [1]}).status_code == 422
        assert client.post("/v1/ingest", json=[1, 2]).status_code == 422
        assert client.post("/v1/ingest", json={"records": [{}] * 65}).status_code == 413
        not_objects = client.post("/v1/ingest", json={"records": [1, "x"]})
    assert not_objects.status_code == 422
    assert all(outcome["reason"].startswith("malformed") for outcome in not_objects.json()["records"])


@pytest.mark.slow
def test_sigkill_during_uploads_loses_no_acknowledged_record(tmp_path: Path, small_batch: tuple) -> None:
    images, labels = small_batch
    database = tmp_path / "service.db"
    token = create_key(database, "ingest")
    from mlwarden.serve import ServiceDatabase

    device = DeviceKey.generate("drone-kill")
    with ServiceDatabase(database) as opened:
        DeviceRegistry(opened).add(device)
    server = start_serve_process(database, tmp_path / "serve.log", "--guards", "auth,payload")
    acknowledged: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def upload() -> None:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=10.0) as client:
            for index in range(2000):
                if stop.is_set():
                    return
                record = sign_record(device, encode_sample(images[index % 64], int(labels[index % 64])))
                try:
                    response = client.post("/v1/ingest", json={"records": [record.to_dict()]})
                except httpx.TransportError:
                    return
                if response.status_code == 200:
                    acknowledged.append(record.nonce)
                else:
                    failures.append(response.text)

    sender = threading.Thread(target=upload)
    sender.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 40 and time.monotonic() < deadline and sender.is_alive():
        time.sleep(0.02)
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(30)
    stop.set()
    sender.join(30)
    assert failures == []
    assert len(acknowledged) >= 40
    with sqlite3.connect(database) as connection:
        stored = {
            nonce: status
            for nonce, status in connection.execute("SELECT nonce, status FROM uploads WHERE device_id = 'drone-kill'")
        }
    missing = [nonce for nonce in acknowledged if nonce not in stored]
    assert missing == []
    assert all(stored[nonce] == "quarantined" for nonce in acknowledged)


def test_encode_sample_round_trip(served_lenet, small_batch: tuple) -> None:
    from mlwarden.serve.ingest import decode_sample

    images, labels = small_batch
    image, label = decode_sample(encode_sample(images[5], int(labels[5])), served_lenet.spec, 10, 65536)
    assert label == int(labels[5])
    assert torch.allclose(image, images[5], atol=1 / 255)

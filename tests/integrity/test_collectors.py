"""Collector records: accepted when authentic, rejected with a reason when forged, altered, stale or replayed."""

from __future__ import annotations

import stat
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from mlwarden.errors import IntegrityError, ParameterError
from mlwarden.integrity import (
    DeviceKey,
    RecordRejected,
    RecordVerifier,
    Rejection,
    SignedRecord,
    SQLiteNonceStore,
    sign_record,
)

NOW = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def key() -> DeviceKey:
    return DeviceKey.generate("sensor-7")


def make_verifier(key: DeviceKey, clock: Clock | None = None, **kwargs) -> RecordVerifier:  # type: ignore[no-untyped-def]
    return RecordVerifier({key.device_id: key}, clock=clock or Clock(), **kwargs)


def record_at(key: DeviceKey, seconds: float = NOW, payload: bytes = b'{"t": 21.5}') -> SignedRecord:
    return sign_record(key, payload, timestamp_ms=int(seconds * 1000))


def test_authentic_record_accepted(key: DeviceKey) -> None:
    verdict = make_verifier(key).verify(record_at(key))
    assert verdict.accepted
    assert verdict.reason is None


def test_replayed_record_rejected(key: DeviceKey) -> None:
    verifier = make_verifier(key)
    record = record_at(key)
    assert verifier.verify(record).accepted
    verdict = verifier.verify(record)
    assert verdict.reason is Rejection.REPLAYED


@pytest.mark.parametrize(("offset", "accepted"), [(-301, False), (-299, True), (29, True), (31, False)])
def test_stale_window(key: DeviceKey, offset: float, accepted: bool) -> None:
    verdict = make_verifier(key).verify(record_at(key, NOW + offset))
    assert verdict.accepted is accepted
    if not accepted:
        assert verdict.reason is Rejection.STALE


def test_replay_after_expiry_still_stale(key: DeviceKey) -> None:
    clock = Clock()
    verifier = make_verifier(key, clock)
    record = record_at(key)
    assert verifier.verify(record).accepted
    clock.now += 10_000
    assert verifier.verify(record).reason is Rejection.STALE


def test_forged_with_wrong_key(key: DeviceKey) -> None:
    impostor = DeviceKey.generate(key.device_id)
    verdict = make_verifier(key).verify(record_at(impostor))
    assert verdict.reason is Rejection.FORGED


@pytest.mark.parametrize("field", ["timestamp_ms", "nonce", "payload_sha256"])
def test_changed_header_forged(key: DeviceKey, field: str) -> None:
    record = record_at(key)
    changes = {"timestamp_ms": record.timestamp_ms + 1, "nonce": "0" * 32, "payload_sha256": "f" * 64}
    verdict = make_verifier(key).verify(replace(record, **{field: changes[field]}))
    assert verdict.reason is Rejection.FORGED


def test_changed_payload_altered(key: DeviceKey) -> None:
    record = record_at(key)
    verdict = make_verifier(key).verify(replace(record, payload=b'{"t": 99.0}'))
    assert verdict.reason is Rejection.ALTERED


def test_unknown_device(key: DeviceKey) -> None:
    other = DeviceKey.generate("sensor-8")
    assert make_verifier(key).verify(record_at(other)).reason is Rejection.UNKNOWN_DEVICE


@pytest.mark.parametrize(
    "change",
    [{"device_id": "bad id!"}, {"nonce": "xyz"}, {"mac": "00"}, {"timestamp_ms": -5}],
    ids=["device-id", "nonce", "mac", "timestamp"],
)
def test_malformed_record(key: DeviceKey, change: dict) -> None:
    assert make_verifier(key).verify(replace(record_at(key), **change)).reason is Rejection.MALFORMED


def test_forged_record_leaves_nonce_unused(key: DeviceKey) -> None:
    verifier = make_verifier(key)
    genuine = record_at(key)
    forged = replace(genuine, mac="0" * 64)
    assert verifier.verify(forged).reason is Rejection.FORGED
    assert verifier.verify(genuine).accepted


def test_check_raises_with_reason(key: DeviceKey) -> None:
    verifier = make_verifier(key)
    record = record_at(key)
    verifier.check(record)
    with pytest.raises(RecordRejected) as caught:
        verifier.check(record)
    assert caught.value.reason is Rejection.REPLAYED
    assert isinstance(caught.value, IntegrityError)


def test_dict_and_header_round_trip(key: DeviceKey) -> None:
    record = record_at(key, payload=b"\x00\xffbinary")
    assert SignedRecord.from_dict(record.to_dict()) == record
    headers = {name.lower(): value for name, value in record.to_headers().items()}
    assert SignedRecord.from_headers(headers, record.payload) == record
    with pytest.raises(RecordRejected, match="malformed"):
        SignedRecord.from_dict({"device_id": "x"})


def test_sqlite_store_survives_restart(key: DeviceKey, tmp_path: Path) -> None:
    record = record_at(key)
    first = make_verifier(key, nonce_store=SQLiteNonceStore(tmp_path / "nonces.db"))
    assert first.verify(record).accepted
    second = make_verifier(key, nonce_store=SQLiteNonceStore(tmp_path / "nonces.db"))
    assert second.verify(record).reason is Rejection.REPLAYED


def test_concurrent_replays_accept_once(key: DeviceKey, tmp_path: Path) -> None:
    for store in (None, SQLiteNonceStore(tmp_path / "race.db")):
        verifier = make_verifier(key, nonce_store=store)
        record = record_at(key)
        verdicts = []
        threads = [threading.Thread(target=lambda: verdicts.append(verifier.verify(record))) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sum(verdict.accepted for verdict in verdicts) == 1


def test_device_key_file(key: DeviceKey, tmp_path: Path) -> None:
    path = key.save(tmp_path / "sensor.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert DeviceKey.load(path) == key
    assert key.secret.hex() not in repr(key)
    with pytest.raises(ParameterError, match="at least 32 bytes"):
        DeviceKey("sensor-7", b"short")


def test_key_lookup_callable(key: DeviceKey) -> None:
    verifier = RecordVerifier(lambda device: key if device == key.device_id else None, clock=Clock())
    assert verifier.verify(record_at(key)).accepted

"""The serve, keys and attack commands."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlwarden.cli import attack as attack_cli
from mlwarden.cli.main import main
from mlwarden.integrity import DeviceKey
from mlwarden.models.zoo import PRETRAINED, WEIGHTS_DIR
from mlwarden.serve import ServiceDatabase
from mlwarden.serve.ingest import DeviceRegistry
from mlwarden.serve.keys import KeyStore, parse_token


def test_keys_create_prints_key_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    database = tmp_path / "service.db"
    assert main(["keys", "create", "--db", str(database), "--scope", "predict", "--scope", "ingest", "--name", "drone-7"]) == 0
    printed = capsys.readouterr().out
    token = next(line.split()[-1] for line in printed.splitlines() if line.startswith("API key"))
    parsed = parse_token(token)
    assert parsed is not None
    key_id, secret = parsed
    assert main(["keys", "list", "--db", str(database), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(row["key_id"], row["name"], row["scopes"]) for row in listed] == [(key_id, "drone-7", ["ingest", "predict"])]
    assert secret.encode() not in database.read_bytes()
    with ServiceDatabase(database) as opened:
        assert KeyStore(opened).authenticate(token).key_id == key_id


def test_keys_revoke_and_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    database = tmp_path / "service.db"
    with ServiceDatabase(database) as opened:
        key, token = KeyStore(opened).create("x", ["predict"])
        KeyStore(opened).set_status(key.key_id, "blocked", "extraction monitor")
    assert main(["keys", "clear", "--db", str(database), key.key_id]) == 0
    assert main(["keys", "revoke", "--db", str(database), key.key_id]) == 0
    assert main(["keys", "revoke", "--db", str(database), "0" * 12]) == 2
    assert "no API key has id" in capsys.readouterr().err
    with ServiceDatabase(database) as opened:
        assert KeyStore(opened).get(key.key_id).status == "revoked"
        assert KeyStore(opened).authenticate(token).reason == "revoked key"


def test_keys_add_device_from_keygen_file(tmp_path: Path) -> None:
    database = tmp_path / "service.db"
    path = DeviceKey.generate("drone-3").save(tmp_path / "drone-3.device.json")
    assert main(["keys", "add-device", "--db", str(database), str(path)]) == 0
    assert main(["keys", "add-device", "--db", str(database), str(path)]) == 2
    with ServiceDatabase(database) as opened:
        assert DeviceRegistry(opened).get("drone-3") == DeviceKey.load(path)


@pytest.mark.slow
def test_serve_rejects_tampered_weights(tmp_path: Path) -> None:
    weights = tmp_path / "lenet5.safetensors"
    shutil.copy(WEIGHTS_DIR / PRETRAINED["lenet5"], weights)
    shutil.copy((WEIGHTS_DIR / PRETRAINED["lenet5"]).with_suffix(".json"), weights.with_suffix(".json"))
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    database = tmp_path / "s.db"
    with ServiceDatabase(database):
        pass
    command = [sys.executable, "-m", "mlwarden.cli.main", "serve", "--model", str(weights), "--db", str(database), "--port", "9"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 2
    assert "SHA-256" in finished.stderr
    events = [json.loads(line).get("event") for line in finished.stderr.splitlines() if line.startswith("{")]
    assert "service.refused" in events
    assert "service.start" not in events


@pytest.fixture
def restore_serve_logging():
    logger = logging.getLogger("mlwarden.serve")
    level = logger.level
    yield
    logger.setLevel(level)


def test_attack_keys_against_url(shared_service, capsys: pytest.CaptureFixture[str], tmp_path: Path, restore_serve_logging) -> None:
    output = tmp_path / "keys.json"
    status = main(["attack", "keys", "--url", shared_service.url, "--attempts", "10", "--no-reference", "--output", str(output)])
    assert status == 0
    assert "accepted" in capsys.readouterr().out
    document = json.loads(output.read_text())
    assert document["outcome"]["attempts"] == 10
    assert document["outcome"]["accepted"] == 0


def test_attack_flood_rejects_remote_url(capsys: pytest.CaptureFixture[str], restore_serve_logging) -> None:
    assert main(["attack", "flood", "--url", "http://192.0.2.1:8000", "--no-reference"]) == 2
    assert "loopback" in capsys.readouterr().err


def test_attack_needs_url_or_drill(capsys: pytest.CaptureFixture[str], restore_serve_logging) -> None:
    assert main(["attack", "keys"]) == 2
    assert "--compare-guards" in capsys.readouterr().err


def test_keys_missing_database_exit_two(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    database = tmp_path / "nosuch.db"
    for action in (["list"], ["devices"], ["revoke", "0" * 12], ["clear", "0" * 12], ["revoke-device", "drone-1"]):
        assert main(["keys", *action, "--db", str(database)]) == 2
        error = capsys.readouterr().err
        assert f"database {str(database)!r} not found" in error
        assert "mlwarden keys create" in error
        assert not database.exists()


def test_serve_missing_database_exit_two(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    database = tmp_path / "nosuch.db"
    # The unknown model makes the command fail fast, rather than serve, should the database check be missing.
    assert main(["serve", "--db", str(database), "--port", "9", "--model", "no-such-model"]) == 2
    assert f"database {str(database)!r} not found" in capsys.readouterr().err
    assert not database.exists()


def test_attack_table_shows_whole_reason() -> None:
    reason = "the service refused the request with 403: this key is blocked by the extraction monitor; ask an operator"
    rows = [{"configuration": "http://127.0.0.1:9", "outcome": {"queries": 0, "stopped": reason}, "service": {}}]
    assert reason in attack_cli._table("extraction", rows)
    assert reason in attack_cli._table("evasion", rows)

"""The keygen, sign, verify and scan-model subcommands: tables, JSON and exit statuses."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from mlwarden.cli.main import main

from .corpus import CorpusFile


def test_keygen_sign_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys"
    assert main(["keygen", "--output", str(keys)]) == 0
    assert stat.S_IMODE((keys / "mlwarden.key").stat().st_mode) == 0o600
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.bin").write_bytes(b"a" * 10_000)
    (data / "b.bin").write_bytes(b"b" * 10)
    manifest = tmp_path / "manifest.json"
    assert main(["sign", str(data), "--key", str(keys / "mlwarden.key"), "--output", str(manifest)]) == 0
    assert "Signed 2 files" in capsys.readouterr().out

    assert main(["verify", str(manifest), "--key", str(keys / "mlwarden.pub")]) == 0
    assert "INTACT" in capsys.readouterr().out

    (data / "b.bin").write_bytes(b"B" + b"b" * 9)
    assert main(["verify", str(manifest), "--key", str(keys / "mlwarden.pub")]) == 1
    output = capsys.readouterr().out
    assert "data/b.bin" in output
    assert "changed" in output

    assert main(["verify", str(manifest), "--key", str(keys / "mlwarden.pub"), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [entry["path"] for entry in report["files"] if entry["status"] != "ok"] == ["data/b.bin"]


def test_verify_wrong_key_exit_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["keygen", "--output", str(tmp_path), "--name", "a"])
    main(["keygen", "--output", str(tmp_path), "--name", "b"])
    (tmp_path / "f.bin").write_bytes(b"x")
    manifest = tmp_path / "m.json"
    main(["sign", str(tmp_path / "f.bin"), "--key", str(tmp_path / "a.key"), "--output", str(manifest)])
    capsys.readouterr()
    assert main(["verify", str(manifest), "--key", str(tmp_path / "b.pub")]) == 1
    assert "signature check failed" in capsys.readouterr().out


def test_usage_errors_exit_two(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(tmp_path / "missing.json"), "--key", str(tmp_path / "missing.pub")]) == 2
    assert main(["sign", str(tmp_path), "--key", str(tmp_path / "missing.key")]) == 2
    main(["keygen", "--output", str(tmp_path)])
    assert main(["keygen", "--output", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_keygen_device_key(tmp_path: Path) -> None:
    from mlwarden.integrity import DeviceKey

    assert main(["keygen", "--device", "sensor-1", "--output", str(tmp_path)]) == 0
    key = DeviceKey.load(tmp_path / "sensor-1.device.json")
    assert key.device_id == "sensor-1"


def test_scan_model_exit_status(corpus: dict[str, CorpusFile], capsys: pytest.CaptureFixture[str]) -> None:
    benign = [str(corpus[name].path) for name in ("lenet_state_dict.pt", "sklearn_pipeline.joblib", "lenet.safetensors")]
    assert main(["scan-model", *benign]) == 0
    output = capsys.readouterr().out
    assert "torch._utils._rebuild_tensor_v2" in output
    assert "0 of 3 files flagged" in output

    assert main(["scan-model", *benign, str(corpus["memo_indirection.pkl"].path)]) == 1
    output = capsys.readouterr().out
    assert "FLAGGED" in output
    assert "os.system" in output


def test_scan_model_json_and_allow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import fractions
    import pickle

    path = tmp_path / "f.pkl"
    path.write_bytes(pickle.dumps(fractions.Fraction(1, 2)))
    assert main(["scan-model", str(path), "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["results"][0]["globals"][0]["name"] == "Fraction"
    assert main(["scan-model", str(path), "--allow", "fractions.Fraction"]) == 0


def test_output_below_file_exit_two(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    assert main(["keygen", "--output", str(blocker)]) == 2
    error = capsys.readouterr().err
    assert "is a file, not a folder" in error
    assert "pass a new or existing folder" in error

    assert main(["keygen", "--output", str(blocker / "keys")]) == 2
    error = capsys.readouterr().err
    assert f"its parent {str(blocker)!r} is a file, not a folder" in error

    keys = tmp_path / "keys"
    assert main(["keygen", "--output", str(keys)]) == 0
    data = tmp_path / "sdata"
    data.mkdir()
    (data / "x.txt").write_text("hello")
    capsys.readouterr()
    assert main(["sign", str(data), "--key", str(keys / "mlwarden.key"), "--output", str(blocker / "m.json")]) == 2
    error = capsys.readouterr().err
    assert f"its parent {str(blocker)!r} is a file, not a folder" in error
    assert "outside the base folder" not in error
    assert main(["sign", str(data), "--key", str(keys / "mlwarden.key"), "--output", str(data)]) == 2
    assert "is a folder; pass a file name" in capsys.readouterr().err


def test_keygen_existing_names_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "--output", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["keygen", "--output", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "pass --force" in error
    assert "overwrite=True" not in error
    assert main(["keygen", "--output", str(tmp_path), "--force"]) == 0


def test_verify_non_manifest_exit_two(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "--output", str(tmp_path)]) == 0
    public = str(tmp_path / "mlwarden.pub")
    text = tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")
    other_json = tmp_path / "config.json"
    other_json.write_text('{"learning_rate": 0.1}\n')
    for path in (text, other_json):
        capsys.readouterr()
        assert main(["verify", str(path), "--key", public]) == 2
        captured = capsys.readouterr()
        assert "TAMPERED" not in captured.out
        assert f"{str(path)!r} is not a manifest" in captured.err
        assert "mlwarden sign" in captured.err


def test_verify_damaged_manifest_exit_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "--output", str(tmp_path)]) == 0
    (tmp_path / "f.bin").write_bytes(b"x" * 100)
    manifest = tmp_path / "m.json"
    assert main(["sign", str(tmp_path / "f.bin"), "--key", str(tmp_path / "mlwarden.key"), "--output", str(manifest)]) == 0
    manifest.write_text(manifest.read_text()[:-20])
    capsys.readouterr()
    assert main(["verify", str(manifest), "--key", str(tmp_path / "mlwarden.pub")]) == 1
    assert "TAMPERED" in capsys.readouterr().out


def test_verify_flipped_byte_names_chunk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "--output", str(tmp_path)]) == 0
    data = tmp_path / "f.bin"
    data.write_bytes(bytes(300))
    manifest = tmp_path / "m.json"
    assert main(["sign", str(data), "--key", str(tmp_path / "mlwarden.key"), "--output", str(manifest)]) == 0
    changed = bytearray(data.read_bytes())
    changed[100] ^= 1
    data.write_bytes(bytes(changed))
    capsys.readouterr()
    assert main(["verify", str(manifest), "--key", str(tmp_path / "mlwarden.pub")]) == 1
    output = capsys.readouterr().out
    assert "the first changed chunk starts at byte 0" in output
    assert "first at byte 0" not in output


def test_sign_with_public_key_no_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    assert main(["keygen", "--output", str(tmp_path)]) == 0
    (tmp_path / "f.bin").write_bytes(b"x")
    capsys.readouterr()
    with caplog.at_level("WARNING", logger="mlwarden.integrity.keys"):
        status = main(["sign", str(tmp_path / "f.bin"), "--key", str(tmp_path / "mlwarden.pub"), "--output", str(tmp_path / "m.json")])
    assert status == 2
    assert "is a public key; give the private key" in capsys.readouterr().err
    assert "can be read by other users" not in caplog.text

"""load_model: loads safe files the safest way, refuses flagged ones without running them."""

from __future__ import annotations

import fractions
import pickle
from pathlib import Path

import pytest
import torch

from mlwarden.errors import IntegrityError, UnsafeFileError
from mlwarden.integrity import Allowlist, build_manifest, generate_keypair, load_model, write_manifest

from .corpus import CorpusFile


def test_safetensors_loaded(corpus: dict[str, CorpusFile]) -> None:
    state = load_model(corpus["lenet.safetensors"].path)
    reference = load_model(corpus["lenet_state_dict.pt"].path)
    assert set(state) == set(reference)
    assert all(torch.equal(state[name], reference[name]) for name in state)


def test_legacy_state_dict_loaded(corpus: dict[str, CorpusFile]) -> None:
    state = load_model(corpus["lenet_state_dict_legacy.pt"].path)
    assert all(isinstance(value, torch.Tensor) for value in state.values())


def test_joblib_model_loaded(corpus: dict[str, CorpusFile]) -> None:
    model = load_model(corpus["sklearn_pipeline.joblib"].path)
    assert hasattr(model, "predict")


@pytest.mark.parametrize("name", ["torch_zip_payload.pt", "torch_legacy_payload.pt", "joblib_payload.joblib", "memo_indirection.pkl"])
def test_flagged_file_refused(corpus: dict[str, CorpusFile], sentinel: Path, name: str) -> None:
    with pytest.raises(UnsafeFileError, match="system") as caught:
        load_model(corpus[name].path)
    assert "allow_unsafe=True" in str(caught.value)
    assert not sentinel.exists()


def test_unscannable_file_refused(corpus: dict[str, CorpusFile]) -> None:
    with pytest.raises(UnsafeFileError, match="cannot be shown to be safe"):
        load_model(corpus["not_a_pickle.pt"].path)


def test_allow_unsafe_override(tmp_path: Path) -> None:
    path = tmp_path / "fraction.pkl"
    path.write_bytes(pickle.dumps({"ratio": fractions.Fraction(1, 3)}))
    with pytest.raises(UnsafeFileError, match="fractions.Fraction"):
        load_model(path)
    assert load_model(path, allow_unsafe=True) == {"ratio": fractions.Fraction(1, 3)}
    allow = Allowlist.default().with_names(["fractions.Fraction"])
    assert load_model(path, allowlist=allow) == {"ratio": fractions.Fraction(1, 3)}


def test_torchscript_refused(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(UnsafeFileError, match="TorchScript"):
        load_model(path)


def test_manifest_checked_before_loading(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.ones(3)}, path)
    private_key, public_key = generate_keypair()
    manifest = write_manifest(build_manifest([path], base_dir=tmp_path, progress=False), private_key, tmp_path / "m.json")
    assert torch.equal(load_model(path, manifest=manifest, public_key=public_key)["w"], torch.ones(3))
    torch.save({"w": torch.zeros(3)}, path)
    with pytest.raises(IntegrityError, match="changed"):
        load_model(path, manifest=manifest, public_key=public_key)
    other = tmp_path / "other.pt"
    torch.save({}, other)
    with pytest.raises(IntegrityError, match="not listed"):
        load_model(other, manifest=manifest, public_key=public_key)

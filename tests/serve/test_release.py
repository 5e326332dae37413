"""Quarantined uploads: the poisoning screen, then the rollback-guarded trainer; nothing is deleted."""

from __future__ import annotations

import copy

import pytest
import torch

from mlwarden.defenses.poisoning.incremental import IncrementalTrainer
from mlwarden.defenses.poisoning.outliers import KNNDistanceDetector
from mlwarden.defenses.poisoning.quarantine import QuarantineStore
from mlwarden.integrity import DeviceKey, sign_record
from mlwarden.serve import ServedModel, ServiceConfig
from mlwarden.serve.ingest import DeviceRegistry, encode_sample
from mlwarden.serve.release import UploadScreen


@pytest.fixture(scope="module")
def trusted(fashion_test) -> tuple[torch.Tensor, torch.Tensor]:
    return fashion_test.images[3000:5000], fashion_test.labels[3000:5000]


def _own_model(served_lenet: ServedModel) -> ServedModel:
    """A served model with its own module, because the trainer changes the weights it learns."""
    module = copy.deepcopy(served_lenet.module)
    return ServedModel(module, served_lenet.name, served_lenet.spec, served_lenet.num_classes, served_lenet.sha256)


def _trainer(model: ServedModel, fashion_test, database_path) -> IncrementalTrainer:
    gold = slice(7000, 7500)
    store = QuarantineStore(database_path)
    return IncrementalTrainer(model.module, fashion_test.images[gold], fashion_test.labels[gold], quarantine=store)


def _upload(running, images: torch.Tensor, labels: torch.Tensor) -> None:
    device = DeviceKey.generate("drone-release")
    DeviceRegistry(running.service.database).add(device)
    records = [sign_record(device, encode_sample(image, int(label))).to_dict() for image, label in zip(images, labels)]
    with running.client(running.key("ingest")) as client:
        assert client.post("/v1/ingest", json={"records": records}).status_code == 200


def _statuses(running) -> list[dict]:
    with running.client(running.key("admin")) as client:
        uploads = client.get("/v1/admin/uploads", params={"limit": 100}).json()
    return sorted(uploads, key=lambda row: row["id"])


def test_screen_rejects_flipped_labels_trainer_learns_rest(start_service, served_lenet, trusted, fashion_test, tmp_path) -> None:
    model = _own_model(served_lenet)
    screen = UploadScreen.fit(model, *trusted)
    trainer = _trainer(model, fashion_test, tmp_path / "quarantine.db")
    running = start_service(ServiceConfig(), model=model, screen=screen, trainer=trainer)
    images = fashion_test.images[6000:6040]
    labels = fashion_test.labels[6000:6040].clone()
    labels[20:] = (labels[20:] + 5) % 10
    _upload(running, images, labels)
    with running.client(running.key("admin")) as client:
        screened = client.post("/v1/admin/uploads/screen").json()
        released = client.post("/v1/admin/uploads/release").json()
        health = client.get("/healthz").json()
    rows = _statuses(running)
    assert screened["examined"] == 40
    flipped_rejected = sum(row["status"] == "rejected" and "poisoning screen" in row["reason"] for row in rows[20:])
    clean_rejected = sum(row["status"] == "rejected" and "poisoning screen" in (row["reason"] or "") for row in rows[:20])
    assert flipped_rejected >= 16
    assert clean_rejected <= 4
    assert released["examined"] == screened["passed"]
    assert trainer.history[-1].samples == screened["passed"]
    passed = [row for row in rows if "poisoning screen" not in (row["reason"] or "")]
    learned = [row for row in passed if row["status"] == "released"]
    assert len(learned) == released["released"] == trainer.history[-1].accepted
    assert released["released"] > 0
    assert trainer.version == 1
    assert health["model_version"] == trainer.version
    assert len(rows) == 40


def test_trainer_rejects_batch_that_passed_screen(start_service, served_lenet, trusted, fashion_test, tmp_path) -> None:
    model = _own_model(served_lenet)
    # A screen that flags nothing, so that flipped labels reach the trainer's own checks.
    screen = UploadScreen.fit(model, *trusted, detectors=[KNNDistanceDetector(cutoff=1e9)])
    trainer = _trainer(model, fashion_test, tmp_path / "quarantine.db")
    weights = {name: value.clone() for name, value in model.module.state_dict().items()}
    running = start_service(ServiceConfig(), model=model, screen=screen, trainer=trainer)
    labels = (fashion_test.labels[6100:6130] + 3) % 10
    _upload(running, fashion_test.images[6100:6130], labels)
    with running.client(running.key("admin")) as client:
        assert client.post("/v1/admin/uploads/screen").json()["passed"] == 30
        released = client.post("/v1/admin/uploads/release").json()
    rows = _statuses(running)
    assert released["released"] == 0
    assert all(row["status"] == "rejected" for row in rows)
    assert all(row["reason"].startswith(("training loop: ", "rolled back: ")) for row in rows)
    for name, value in model.module.state_dict().items():
        assert torch.equal(value, weights[name]), name


def test_release_without_trainer_gets_409(start_service) -> None:
    running = start_service(ServiceConfig())
    with running.client(running.key("admin")) as client:
        assert client.post("/v1/admin/uploads/screen").status_code == 409
        assert client.post("/v1/admin/uploads/release").status_code == 409


def test_trainer_must_train_served_module(start_service, served_lenet, fashion_test, tmp_path) -> None:
    other = _own_model(served_lenet)
    trainer = _trainer(other, fashion_test, tmp_path / "quarantine.db")
    with pytest.raises(ValueError, match="served module itself"):
        start_service(ServiceConfig(), trainer=trainer)

"""Quarantined uploads: the poisoning screen, then release through a guarded trainer; nothing is deleted."""

from __future__ import annotations

import pytest
import torch

from mlwarden.integrity import DeviceKey, sign_record
from mlwarden.serve import ServiceConfig
from mlwarden.serve.ingest import DeviceRegistry, encode_sample
from mlwarden.serve.release import TrainingVerdict, UploadScreen


class RecordingTrainer:
    """A stand-in for the rollback-guarded loop that keeps or rolls back every batch, as set, and records it."""

    def __init__(self, accept: bool) -> None:
        self.accept = accept
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def update(self, inputs: torch.Tensor, labels: torch.Tensor) -> TrainingVerdict:
        self.batches.append((inputs, labels))
        return TrainingVerdict(self.accept, "" if self.accept else "held-out accuracy fell by 4.0 points")


@pytest.fixture(scope="module")
def screen(served_lenet, fashion_test) -> UploadScreen:
    return UploadScreen.fit(served_lenet, fashion_test.images[3000:5000], fashion_test.labels[3000:5000])


def _upload(running, images: torch.Tensor, labels: torch.Tensor) -> None:
    device = DeviceKey.generate("drone-release")
    DeviceRegistry(running.service.database).add(device)
    records = [sign_record(device, encode_sample(image, int(label))).to_dict() for image, label in zip(images, labels)]
    with running.client(running.key("ingest")) as client:
        assert client.post("/v1/ingest", json={"records": records}).status_code == 200


@pytest.mark.parametrize("accept", [True, False], ids=["trained", "rolled-back"])
def test_screen_rejects_flipped_labels_then_release(start_service, screen, fashion_test, accept: bool) -> None:
    trainer = RecordingTrainer(accept)
    running = start_service(ServiceConfig(), screen=screen, trainer=trainer)
    images = fashion_test.images[6000:6040]
    labels = fashion_test.labels[6000:6040].clone()
    flipped = torch.arange(20, 40)
    labels[flipped] = (labels[flipped] + 5) % 10
    _upload(running, images, labels)
    admin = running.key("admin")
    with running.client(admin) as client:
        screened = client.post("/v1/admin/uploads/screen").json()
        released = client.post("/v1/admin/uploads/release").json()
        uploads = client.get("/v1/admin/uploads", params={"limit": 100}).json()
    assert screened["examined"] == 40
    by_id = {row["id"]: row for row in uploads}
    assert len(by_id) == 40
    ordered = [by_id[key] for key in sorted(by_id)]
    rejected_flipped = sum(row["status"] == "rejected" and "poisoning screen" in row["reason"] for row in ordered[20:])
    rejected_clean = sum(row["status"] == "rejected" and "poisoning screen" in (row["reason"] or "") for row in ordered[:20])
    assert rejected_flipped >= 16
    assert rejected_clean <= 4
    assert released["examined"] == screened["passed"]
    assert len(trainer.batches) == 1
    final = "released" if accept else "rejected"
    passed = [row for row in ordered if "poisoning screen" not in (row["reason"] or "")]
    assert all(row["status"] == final for row in passed)
    if not accept:
        assert all(row["reason"] == "rolled back: held-out accuracy fell by 4.0 points" for row in passed)


def test_release_without_trainer_gets_409(start_service) -> None:
    running = start_service(ServiceConfig())
    with running.client(running.key("admin")) as client:
        assert client.post("/v1/admin/uploads/screen").status_code == 409
        assert client.post("/v1/admin/uploads/release").status_code == 409

"""Incremental training with rollback: exact weights, quarantine with reasons, denial-of-service streams."""

from __future__ import annotations

import copy

import pytest
import torch

from mlwarden.attacks.poisoning import BadNetsBackdoor, DriftStream, LossMaximizingStream
from mlwarden.data import Dataset
from mlwarden.defenses.poisoning import (
    IncrementalConfig,
    IncrementalTrainer,
    LabelDisagreementScreen,
    PatchSweepCheck,
    QuarantineStore,
    TriggerCheck,
)
from mlwarden.errors import ParameterError

# Tolerances off, so that only the check a test is about can reject.
LENIENT = {"accuracy_tolerance": 1.0, "max_drift": 1.0, "loss_factor": 1000.0}


@pytest.fixture()
def model(lenet: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(lenet)


@pytest.fixture()
def gold(fashion_test: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    return fashion_test.images[:500], fashion_test.labels[:500]


@pytest.fixture()
def stream_data(fashion_test: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    return fashion_test.images[1000:3000], fashion_test.labels[1000:3000]


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in module.state_dict().items()}


def _same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)


def test_clean_batch_is_learned(model, gold, stream_data) -> None:  # type: ignore[no-untyped-def]
    images, labels = stream_data
    trainer = IncrementalTrainer(model, *gold, quarantine=QuarantineStore(":memory:"))
    before = _state(model)
    outcome = trainer.submit(images[:128], labels[:128], source="collector-1")
    assert outcome.status == "accepted"
    assert outcome.accepted == 128
    assert trainer.version == 1
    assert not _same_weights(before, _state(model))


def test_harmful_batch_rolled_back_exactly(model, gold, stream_data) -> None:  # type: ignore[no-untyped-def]
    images, labels = stream_data
    store = QuarantineStore(":memory:")
    config = IncrementalConfig(loss_factor=1000.0, learning_rate=0.01, epochs=2)
    trainer = IncrementalTrainer(model, *gold, quarantine=store, config=config)
    before = _state(model)
    outcome = trainer.submit(images[:256], (labels[:256] + 1) % 10, batch_id="shifted")
    assert outcome.status == "rolled back"
    assert outcome.candidate_gold_accuracy < trainer.gold_accuracy - config.accuracy_tolerance
    assert _same_weights(before, _state(model))
    assert trainer.version == 0
    records = store.records(batch_id="shifted")
    assert len(records) == 256
    assert sorted(record.index for record in records) == list(range(256))
    assert all("gold accuracy would fall" in record.reason for record in records)


def test_rollback_restores_previous_version(model, gold, stream_data) -> None:  # type: ignore[no-untyped-def]
    images, labels = stream_data
    trainer = IncrementalTrainer(model, *gold, quarantine=QuarantineStore(":memory:"))
    trainer.submit(images[:128], labels[:128])
    after_first = _state(model)
    trainer.submit(images[128:256], labels[128:256])
    assert trainer.version == 2
    assert not _same_weights(after_first, _state(model))
    assert trainer.rollback() == 1
    assert _same_weights(after_first, _state(model))
    trainer.submit(images[256:384], labels[256:384])
    assert trainer.version == 3
    with pytest.raises(ParameterError, match="earlier versions are kept"):
        trainer.rollback(versions=10)


def test_backdoor_batch_rolled_back(model, gold, stream_data) -> None:  # type: ignore[no-untyped-def]
    images, labels = stream_data
    attack = BadNetsBackdoor(rate=0.5, target_class=0)
    poisoned = attack.poison(images[:256], labels[:256])
    config = IncrementalConfig(**LENIENT, epochs=3)
    for check in (TriggerCheck(attack.apply_trigger, *gold, target_class=0), PatchSweepCheck(*gold)):
        served = copy.deepcopy(model)
        trainer = IncrementalTrainer(served, *gold, quarantine=QuarantineStore(":memory:"), config=config, backdoor_check=check)
        before = _state(served)
        outcome = trainer.submit(poisoned.inputs, poisoned.labels)
        assert outcome.status == "rolled back", type(check).__name__
        assert "backdoor check would rise" in outcome.reasons[0]
        assert _same_weights(before, _state(served))


def test_isolation_keeps_the_clean_half(model, gold, stream_data) -> None:  # type: ignore[no-untyped-def]
    images, labels = stream_data
    mixed = torch.cat([labels[:128], (labels[128:256] + 1) % 10])
    config = IncrementalConfig(loss_factor=1000.0, epochs=3, isolate_depth=1)
    trainer = IncrementalTrainer(model, *gold, quarantine=QuarantineStore(":memory:"), config=config)
    outcome = trainer.submit(images[:256], mixed)
    assert outcome.status == "partial"
    assert outcome.accepted == 128
    assert outcome.quarantined == 128
    assert sorted(record.index for record in trainer.quarantine.records()) == list(range(128, 256))


def test_screen_quarantines_impossible_labels(model, gold, stream_data) -> None:  # type: ignore[no-untyped-def]
    images, labels = stream_data
    batch_labels = labels[:64].clone()
    batch_labels[:8] = model(images[:8]).argmin(1)
    trainer = IncrementalTrainer(model, *gold, quarantine=QuarantineStore(":memory:"), screen=LabelDisagreementScreen())
    outcome = trainer.submit(images[:64], batch_labels)
    flagged = {record.index for record in trainer.quarantine.records()}
    assert set(range(8)) <= flagged
    assert outcome.accepted + outcome.quarantined == 64
    assert all(record.reason.startswith("screen: ") for record in trainer.quarantine.records())


def test_denial_of_service_stream_blocked(model, gold, stream_data) -> None:  # type: ignore[no-untyped-def]
    images, labels = stream_data
    store = QuarantineStore(":memory:")
    trainer = IncrementalTrainer(model, *gold, quarantine=store)
    trainer.submit(images[:64], labels[:64], source="honest")
    served = _state(model)
    attacker = copy.deepcopy(model)
    outcomes = [trainer.submit(x, y, source="attacker") for x, y in LossMaximizingStream(attacker, images[500:], batch_size=32, batches=6)]
    assert [outcome.status for outcome in outcomes] == ["rejected"] * 3 + ["blocked"] * 3
    assert "attacker" in trainer.blocked_sources
    assert _same_weights(served, _state(model))
    honest = trainer.submit(images[64:128], labels[64:128], source="honest")
    assert honest.status == "accepted"
    assert len(store.records(source="attacker")) == 6 * 32


def test_nothing_is_dropped_silently(model, gold, stream_data) -> None:  # type: ignore[no-untyped-def]
    images, labels = stream_data
    store = QuarantineStore(":memory:")
    config = IncrementalConfig(learning_rate=0.01, isolate_depth=2)
    trainer = IncrementalTrainer(model, *gold, quarantine=store, config=config, screen=LabelDisagreementScreen())
    batches = [
        (images[:64], labels[:64]),
        (images[64:128], (labels[64:128] + 3) % 10),
        (images[128:192], torch.cat([labels[128:160], (labels[160:192] + 1) % 10])),
        (images[192:256], model(images[192:256]).argmin(1)),
    ]
    outcomes = [trainer.submit(x, y, batch_id=f"b{number}") for number, (x, y) in enumerate(batches)]
    for outcome in outcomes:
        assert outcome.accepted + outcome.quarantined == outcome.samples
        assert len(store.records(batch_id=outcome.batch_id)) == outcome.quarantined
        assert (outcome.quarantined == 0) == (not outcome.reasons)
    assert len(store) == sum(outcome.quarantined for outcome in outcomes)
    assert all(record.reason for record in store.records())


def test_slow_drift_stopped_at_max_drift(model, gold, stream_data) -> None:  # type: ignore[no-untyped-def]
    images, labels = stream_data
    config = IncrementalConfig(loss_factor=1000.0, accuracy_tolerance=0.05, max_drift=0.03, stream_rejections=5)
    trainer = IncrementalTrainer(model, *gold, quarantine=QuarantineStore(":memory:"), config=config)
    stream = DriftStream(images, labels, num_classes=10, start_fraction=0.3, growth=0.2, batch_size=128, batches=6)
    outcomes = [trainer.submit(x, y) for x, y in stream]
    assert any(outcome.status == "rolled back" for outcome in outcomes)
    assert trainer.gold_accuracy >= trainer.reference_accuracy - config.max_drift


def test_trainer_requires_a_quarantine(model, gold) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ParameterError, match="QuarantineStore"):
        IncrementalTrainer(model, *gold, quarantine=None)  # type: ignore[arg-type]


@pytest.mark.parametrize("setting", [{"epochs": 0}, {"accuracy_tolerance": 2.0}, {"stream_rejections": 9}, {"loss_factor": 0.5}])
def test_config_rejects_invalid(setting: dict[str, object]) -> None:
    with pytest.raises(ParameterError):
        IncrementalConfig(**setting)  # type: ignore[arg-type]

"""The quarantine store: records with reasons, exact samples, persistence, no deletion."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from mlwarden.defenses.poisoning import QuarantineStore
from mlwarden.errors import DataError, IntegrityError, ParameterError


def test_add_and_read_back_exactly(tmp_path: Path) -> None:
    store = QuarantineStore(tmp_path / "quarantine.db")
    samples = torch.rand(3, 1, 4, 4)
    ids = store.add(samples, torch.tensor([1, 2, 3]), reason=["a", "b", "c"], source="sensor-1", batch_id="b1", scores=[0.5, 0.6, 0.7])
    assert len(ids) == 3
    records = store.records()
    assert [record.reason for record in records] == ["a", "b", "c"]
    assert [record.index for record in records] == [0, 1, 2]
    assert [record.label for record in records] == [1, 2, 3]
    assert records[0].source == "sensor-1"
    assert records[2].score == pytest.approx(0.7)
    stored, labels = store.samples(ids)
    assert np.array_equal(stored, samples.numpy())
    assert labels.tolist() == [1, 2, 3]


def test_records_persist_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "quarantine.db"
    with QuarantineStore(path) as store:
        store.add(np.zeros((2, 5)), np.array([0, 1]), reason="label disagrees", batch_id="b9", details={"detector": "knn"})
    reopened = QuarantineStore(path)
    assert len(reopened) == 2
    assert reopened.records(batch_id="b9")[0].details == {"detector": "knn"}
    assert reopened.reasons() == {"label disagrees": 2}


def test_release_keeps_the_record(tmp_path: Path) -> None:
    store = QuarantineStore(tmp_path / "q.db")
    ids = store.add(np.zeros((4, 2)), reason="outlier")
    assert store.release(ids[:2], note="reviewed: true labels") == 2
    assert store.count() == 2
    assert store.count(status="released") == 2
    assert len(store) == 4
    released = store.records(status="released")
    assert [record.status_note for record in released] == ["reviewed: true labels"] * 2


@pytest.mark.parametrize("reason", ["", "   ", ["ok", ""], ["only one"]])
def test_empty_or_missing_reason_rejected(reason: object) -> None:
    store = QuarantineStore(":memory:")
    with pytest.raises(ParameterError, match="non-empty reason"):
        store.add(np.zeros((2, 2)), reason=reason)  # type: ignore[arg-type]
    assert len(store) == 0


def test_release_needs_a_note() -> None:
    store = QuarantineStore(":memory:")
    ids = store.add(np.zeros((1, 2)), reason="outlier")
    with pytest.raises(ParameterError, match="why"):
        store.release(ids, note=" ")


def test_metadata_only_records() -> None:
    store = QuarantineStore(":memory:")
    ids = store.add(None, reason="rows of a file on disk", indices=[10, 20])
    assert [record.index for record in store.records()] == [10, 20]
    with pytest.raises(DataError, match="has no sample data"):
        store.samples(ids)


def test_export_jsonl(tmp_path: Path) -> None:
    store = QuarantineStore(tmp_path / "q.db")
    store.add(np.zeros((2, 2)), np.array([3, 4]), reason="flip", batch_id="b2")
    path = store.export_jsonl(tmp_path / "quarantine.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["label"] for line in lines] == [3, 4]
    assert all(line["reason"] == "flip" for line in lines)


def test_foreign_database_rejected(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE quarantine_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    connection.execute("INSERT INTO quarantine_meta VALUES ('schema', 'someone.else/3')")
    connection.commit()
    connection.close()
    with pytest.raises(IntegrityError, match="someone.else/3"):
        QuarantineStore(path)


def test_concurrent_adds_lose_nothing(tmp_path: Path) -> None:
    store = QuarantineStore(tmp_path / "q.db")

    def add_many(thread: int) -> None:
        for batch in range(10):
            store.add(np.full((5, 2), thread), reason=f"thread {thread}", batch_id=f"{thread}-{batch}")

    threads = [threading.Thread(target=add_many, args=(number,)) for number in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store) == 4 * 10 * 5
    assert store.reasons() == {f"thread {number}": 50 for number in range(4)}


def test_many_samples_read_back() -> None:
    store = QuarantineStore(":memory:")
    samples = np.arange(1200 * 3, dtype=np.float32).reshape(1200, 3)
    ids = store.add(samples, np.arange(1200) % 7, reason="bulk")
    stored, labels = store.samples(ids[::-1])
    assert np.array_equal(stored, samples[::-1])
    assert np.array_equal(labels, (np.arange(1200) % 7)[::-1])

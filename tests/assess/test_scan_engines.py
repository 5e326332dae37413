"""Scans of sharded data sets: exact global suspects, equal engines, memory bounded by the partition size."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mlwarden.assess.engines import LocalEngine
from mlwarden.assess.engines.scan import merge_suspects, scan_sharded
from mlwarden.data.shards import open_sharded
from mlwarden.defenses.poisoning.features import extract_features
from mlwarden.defenses.poisoning.outliers import KNNDistanceDetector

FLIPPED = 30


def write_shards(folder: Path, images: np.ndarray, labels: np.ndarray, shard: int) -> Path:
    """Write ``images`` (uint8, N x 28 x 28) and ``labels`` as .npy shard pairs of ``shard`` samples."""
    folder.mkdir(parents=True, exist_ok=True)
    for number, start in enumerate(range(0, len(images), shard)):
        np.save(folder / f"part-{number:04d}-images.npy", images[start : start + shard])
        np.save(folder / f"part-{number:04d}-labels.npy", labels[start : start + shard])
    return folder


@pytest.fixture(scope="module")
def poisoned_shards(tmp_path_factory, fashion_test) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    """1,500 test images in three shards, with 30 labels flipped."""
    images = (fashion_test.images[:1500, 0].numpy() * 255).round().astype(np.uint8)
    labels = fashion_test.labels[:1500].numpy().copy()
    flipped = np.random.default_rng(0).choice(1500, FLIPPED, replace=False)
    labels[flipped] = (labels[flipped] + 5) % 10
    folder = write_shards(tmp_path_factory.mktemp("shards"), images, labels, 500)
    return folder, images, labels, flipped


def scan(folder: Path, model: torch.nn.Module, **settings: Any) -> dict[str, Any]:
    options = {"partition_size": 250, "batch_size": 250, "top_k": 40, "progress": False, **settings}
    return scan_sharded(open_sharded(folder), model, [KNNDistanceDetector()], **options)


def without_run_fields(results: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in results.items() if key not in ("seconds", "engine")}


def test_sharded_scan_equals_in_memory_scan(poisoned_shards, lenet):
    folder, images, labels, flipped = poisoned_shards
    results = scan(folder, lenet, engine=LocalEngine(workers=1), fit_samples=10_000)

    # The same detector fitted on the whole set in memory, features computed in the same batches.
    features = extract_features(lenet, torch.from_numpy(images).float().unsqueeze(1) / 255.0, batch_size=250)
    detector = KNNDistanceDetector().fit(features, labels)
    decisions = detector.training_decisions(labels)
    order = np.lexsort((np.arange(len(labels)), -decisions))[:40]

    assert results["samples"] == 1500
    assert results["engine"]["partitions"] == 6
    assert results["flagged"] == int((decisions > 0).sum())
    assert [suspect["index"] for suspect in results["suspects"]] == order.tolist()
    assert [suspect["decision"] for suspect in results["suspects"]] == decisions[order].tolist()
    assert len(set(order.tolist()) & set(flipped.tolist())) > FLIPPED // 2


def test_suspect_merge_is_exact_top_k():
    rng = np.random.default_rng(1)
    decisions = rng.normal(size=200).round(1)  # rounding makes ties, broken by the lower index
    everything = [{"index": i, "decision": float(d)} for i, d in enumerate(decisions)]
    parts = [everything[start : start + 30] for start in range(0, 200, 30)]
    part_tops = [merge_suspects([part], 10) for part in parts]
    assert merge_suspects(part_tops, 10) == merge_suspects([everything], 10)


@pytest.mark.slow
def test_pool_and_dask_scans_agree(poisoned_shards, lenet, dask_cluster):
    folder = poisoned_shards[0]
    settings = {"fit_samples": 800, "seed": 3}
    local = scan(folder, lenet, engine=LocalEngine(workers=2), **settings)
    on_dask = scan(folder, lenet, engine="dask", scheduler=dask_cluster.scheduler_address, **settings)
    assert local["engine"]["workers"] == 2
    assert on_dask["engine"]["name"] == "dask"
    assert without_run_fields(local) == without_run_fields(on_dask)


PEAK_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    from mlwarden.assess.engines import LocalEngine
    from mlwarden.assess.engines.scan import scan_sharded
    from mlwarden.data.shards import open_sharded
    from mlwarden.defenses.poisoning.outliers import KNNDistanceDetector
    from mlwarden.models import load_pretrained

    model, _ = load_pretrained("lenet5")
    results = scan_sharded(
        open_sharded(sys.argv[1]), model, [KNNDistanceDetector()], engine=LocalEngine(workers=1),
        partition_size=int(sys.argv[2]), fit_samples=1000, batch_size=500, top_k=20, progress=False,
    )
    print(json.dumps({"samples": results["samples"], "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
    """
)


@pytest.mark.slow
def test_scan_memory_stays_bounded(tmp_path, fashion_test):
    budget = 5000
    images = (fashion_test.images[:budget, 0].numpy() * 255).round().astype(np.uint8)
    labels = fashion_test.labels[:budget].numpy()
    peaks = {}
    for factor in (1, 4):
        folder = write_shards(tmp_path / f"x{factor}", np.concatenate([images] * factor), np.concatenate([labels] * factor), budget)
        process = subprocess.run(
            [sys.executable, "-c", PEAK_SCRIPT, str(folder), str(budget)], capture_output=True, text=True, timeout=600
        )
        assert process.returncode == 0, process.stderr
        outcome = json.loads(process.stdout.strip().splitlines()[-1])
        assert outcome["samples"] == factor * budget
        peaks[factor] = outcome["peak_kib"] * 1024

    # Holding the 4x set as float32 would add three more budgets of images (about 47 MB) to the peak.
    extra_budgets = 3 * budget * 28 * 28 * 4
    assert peaks[4] - peaks[1] < extra_budgets / 2, peaks

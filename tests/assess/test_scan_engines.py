"""Scans of sharded data sets: exact global suspects, equal engines, memory bounded by the partition size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mlwarden.assess.engines import LocalEngine
from mlwarden.assess.engines.scan import ModelFeatures, scan_sharded
from mlwarden.cli.main import main
from mlwarden.data.shards import open_sharded
from mlwarden.defenses.poisoning.features import extract_features
from mlwarden.defenses.poisoning.scan import DataScanner, ScanConfig, shards_of

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


def scan(folder: Path, model: torch.nn.Module, **settings: Any) -> Any:
    config = ScanConfig(detectors=("knn",), fit_samples=settings.pop("fit_samples"), components=20, top_k=40, seed=3)
    options = {"partition_size": 250, "progress": False, **settings}
    return scan_sharded(open_sharded(folder), config=config, featurize=ModelFeatures(model, batch_size=250), **options)


def without_run_fields(summary: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in summary.items() if key not in ("seconds", "engine")}


def assert_same_suspects(found: list[Any], expected: list[Any]) -> None:
    """The same samples, in the same order, for the same reasons; scores equal up to float rounding.

    Partitions of other sizes sum the k-NN distances in another order, which moves a score in its
    15th digit on some processors.
    """
    def fields(suspects: list[Any]) -> list[tuple[Any, ...]]:
        return [(s.index, s.label, s.reason, s.detector, s.suggested_label) for s in suspects]

    assert fields(found) == fields(expected)
    assert [s.score for s in found] == pytest.approx([s.score for s in expected], rel=1e-9)


def test_sharded_scan_equals_in_memory_scan(poisoned_shards, lenet):
    folder, images, labels, flipped = poisoned_shards
    report = scan(folder, lenet, engine=LocalEngine(workers=1), fit_samples=1000)

    # The scanning core on the whole set in memory, features computed in the same batches.
    features = extract_features(lenet, torch.from_numpy(images).float().unsqueeze(1) / 255.0, batch_size=250)
    config = ScanConfig(detectors=("knn",), fit_samples=1000, components=20, top_k=40, seed=3)
    reference = DataScanner(config, progress=False).scan(shards_of(features, labels, 500))

    assert report.summary["rows"] == 1500
    assert report.summary["engine"]["partitions"] == 6
    assert_same_suspects(report.suspects, reference.suspects)
    assert without_run_fields(report.summary) == without_run_fields(reference.summary)
    assert len({suspect.index for suspect in report.suspects} & set(flipped.tolist())) > FLIPPED // 2


@pytest.mark.slow
def test_pool_and_dask_scans_agree(poisoned_shards, lenet, dask_cluster):
    folder = poisoned_shards[0]
    local = scan(folder, lenet, engine=LocalEngine(workers=2), fit_samples=800)
    on_dask = scan(folder, lenet, engine="dask", scheduler=dask_cluster.scheduler_address, fit_samples=800)
    assert local.summary["engine"]["workers"] == 2
    assert on_dask.summary["engine"]["name"] == "dask"
    assert_same_suspects(local.suspects, on_dask.suspects)
    assert without_run_fields(local.summary) == without_run_fields(on_dask.summary)


PEAK_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    from mlwarden.assess.engines import LocalEngine
    from mlwarden.assess.engines.scan import ModelFeatures, scan_sharded
    from mlwarden.data.shards import open_sharded
    from mlwarden.defenses.poisoning.scan import ScanConfig
    from mlwarden.models import load_pretrained

    model, _ = load_pretrained("lenet5")
    report = scan_sharded(
        open_sharded(sys.argv[1]), config=ScanConfig(detectors=("knn",), fit_samples=1000, top_k=20),
        featurize=ModelFeatures(model), engine=LocalEngine(workers=1), partition_size=int(sys.argv[2]), progress=False,
    )
    print(json.dumps({"samples": report.summary["rows"], "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
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
        # glibc raises its mmap threshold after large frees and then keeps freed buffers in the heap,
        # where the peak RSS counts them; a fixed threshold makes the peak follow live memory.
        environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        process = subprocess.run(
            [sys.executable, "-c", PEAK_SCRIPT, str(folder), str(budget)],
            capture_output=True,
            text=True,
            timeout=600,
            env=environment,
        )
        assert process.returncode == 0, process.stderr
        outcome = json.loads(process.stdout.strip().splitlines()[-1])
        assert outcome["samples"] == factor * budget
        peaks[factor] = outcome["peak_kib"] * 1024

    # Holding the 4x set as float32 would add three more budgets of images (about 47 MB) to the peak.
    extra_budgets = 3 * budget * 28 * 28 * 4
    assert peaks[4] - peaks[1] < extra_budgets / 2, peaks


@pytest.mark.slow
def test_scan_data_cli_engines_agree(poisoned_shards, tmp_path, dask_cluster):
    folder = poisoned_shards[0]
    common = ["--model", "lenet5", "--detectors", "knn", "--shard-size", "500", "--fit-samples", "800", "--top", "20"]
    engines = {
        "local": ["--engine", "local", "--workers", "1"],
        "dask": ["--engine", "dask", "--scheduler", dask_cluster.scheduler_address],
    }
    for name, arguments in engines.items():
        assert main(["scan-data", str(folder), *arguments, *common, "--output", str(tmp_path / name)]) == 0
    local_rows = (tmp_path / "local" / "suspects.csv").read_text().splitlines()
    assert len(local_rows) == 21
    assert local_rows == (tmp_path / "dask" / "suspects.csv").read_text().splitlines()
    summary = json.loads((tmp_path / "dask" / "summary.json").read_text())
    assert summary["engine"]["name"] == "dask"
    assert summary["rows"] == 1500

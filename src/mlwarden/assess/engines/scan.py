"""Scan a sharded data set for poisoned samples on an engine, one partition at a time.

The poisoning detectors of :mod:`mlwarden.defenses.poisoning` fit per-class
models on a whole set. A set larger than memory is therefore scanned in two
passes over partitions of at most ``partition_size`` samples:

1. **fit**: every partition returns the model's features of its samples that
   belong to the fitting sample (all samples when there are at most
   ``fit_samples``, else a seeded uniform choice of ``fit_samples``); the
   detectors are fitted on those features in the calling process.
2. **score**: the fitted detectors travel to the workers once; every
   partition is read, its features computed in batches of ``batch_size``,
   and each detector's decision (score minus its class threshold) is taken.
   A sample of the fitting sample gets its decision from the fit itself
   (out-of-fold, so it never vouches for itself), which is what a scan of a
   set that fits in memory reports. A partition returns its counts and its
   ``top_k`` most suspect samples.

The merge adds the counts and keeps the ``top_k`` highest decisions of all
partitions' lists, ties broken by the lower index. That is the exact global
top-k, because each sample of the global list is among the ``top_k`` of its
own partition. Memory per worker is one partition and its features; the
calling process holds the fitting features and ``top_k`` suspects per
partition in flight.

With the Dask engine the partitions are the chunks of a Dask array
(:meth:`~mlwarden.data.shards.ShardedDataset.to_dask`), computed on the
worker that scores them; the local engine's workers read their partition
themselves. Every worker must see the shards at the same path.

Limitations: with more samples than ``fit_samples``, the detectors are fitted
on a sample of the set, so per-class thresholds are estimates from that
sample; flagged counts outside it follow those thresholds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..._validation import check_int
from ...data.shards import Partition, ShardedDataset
from ...defenses.poisoning.base import PoisonDetector
from ...defenses.poisoning.features import extract_features
from .base import Engine, get_engine

__all__ = ["ScanUnit", "ScanPayload", "scan_sharded", "scan_partition", "merge_suspects", "SCAN_SCHEMA"]

logger = logging.getLogger(__name__)

SCAN_SCHEMA = "mlwarden.sharded-scan/1"


@dataclass(frozen=True)
class ScanUnit:
    """One pass over one partition: ``fit`` collects fitting features, ``score`` scores every sample."""

    phase: str
    partition: Partition

    @property
    def id(self) -> str:
        """Readable name for task keys and logs."""
        return f"{self.phase}.{self.partition.id}"


@dataclass
class ScanPayload:
    """Inputs of every scan unit: the data set, the model, and after the fit the fitted detectors."""

    dataset: ShardedDataset
    model: nn.Module
    layer: str | None
    batch_size: int
    fit_indices: np.ndarray
    top_k: int
    detectors: list[PoisonDetector] = field(default_factory=list)
    fit_decisions: np.ndarray | None = None


def scan_partition(
    unit: ScanUnit, payload: ScanPayload, images: np.ndarray | None = None, labels: np.ndarray | None = None
) -> dict[str, Any]:
    """Run one pass on one partition; read the partition unless the engine passes its blocks."""
    partition = unit.partition
    if images is None or labels is None:
        images, labels = payload.dataset.read(partition)
    indices = np.arange(partition.offset, partition.offset + len(partition))
    in_fit = np.isin(indices, payload.fit_indices)
    if unit.phase == "fit":
        rows = np.flatnonzero(in_fit)
        features = extract_features(payload.model, torch.from_numpy(images[rows]), layer=payload.layer, batch_size=payload.batch_size)
        return {"indices": indices[rows], "labels": labels[rows], "features": features}

    features = extract_features(payload.model, torch.from_numpy(images), layer=payload.layer, batch_size=payload.batch_size)
    decisions = np.stack([detector.decision_function(features, labels) for detector in payload.detectors])
    if in_fit.any():
        assert payload.fit_decisions is not None  # set with the fitted detectors
        positions = np.searchsorted(payload.fit_indices, indices[in_fit])
        decisions[:, in_fit] = payload.fit_decisions[:, positions]
    flagged = decisions > 0
    suspect = flagged.any(0)
    worst = decisions.max(0)
    order = np.lexsort((indices, -worst))[: payload.top_k]
    names = [detector.name for detector in payload.detectors]
    return {
        "samples": len(partition),
        "flagged": int(suspect.sum()),
        "flagged_by": {name: int(flagged[row].sum()) for row, name in enumerate(names)},
        "flagged_per_class": _count_by_label(labels[suspect]),
        "samples_per_class": _count_by_label(labels),
        "suspects": [
            {
                "index": int(indices[row]),
                "label": int(labels[row]),
                "decision": float(worst[row]),
                "decisions": {name: float(decisions[position, row]) for position, name in enumerate(names)},
                "flagged_by": [name for position, name in enumerate(names) if flagged[position, row]],
            }
            for row in order
        ],
    }


def _count_by_label(labels: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(labels, return_counts=True)
    return {str(int(value)): int(count) for value, count in zip(values, counts)}


def merge_suspects(lists: Sequence[Sequence[dict[str, Any]]], top_k: int) -> list[dict[str, Any]]:
    """Return the ``top_k`` suspects of all lists by decision (highest first), ties by the lower index."""
    merged = [suspect for suspects in lists for suspect in suspects]
    merged.sort(key=lambda suspect: (-suspect["decision"], suspect["index"]))
    return merged[:top_k]


def _choose_fit_indices(samples: int, fit_samples: int, seed: int) -> np.ndarray:
    if samples <= fit_samples:
        return np.arange(samples)
    return np.sort(np.random.default_rng(seed).choice(samples, size=fit_samples, replace=False))


def scan_sharded(
    dataset: ShardedDataset,
    model: nn.Module,
    detectors: Sequence[PoisonDetector],
    *,
    engine: str | Engine = "local",
    scheduler: str | None = None,
    workers: int | None = None,
    partition_size: int = 10_000,
    fit_samples: int = 20_000,
    top_k: int = 100,
    layer: str | None = None,
    batch_size: int = 500,
    seed: int = 0,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Scan a sharded data set with poisoning detectors; return counts and the exact global top-k suspects.

    Parameters
    ----------
    dataset : ShardedDataset
    model : nn.Module
        Supplies the features (its ``features(x)`` method, or ``layer``).
    detectors : sequence of PoisonDetector
        Unfitted detectors; a sample is flagged when any flags it.
    engine, scheduler, workers
        Where partitions run (see :func:`~mlwarden.assess.engines.get_engine`).
    partition_size : int, default 10000
        Samples per partition, the memory budget of one unit; rounded up to
        a multiple of ``batch_size`` so that batches do not depend on the engine.
    fit_samples : int, default 20000
        Most samples the detectors are fitted on.
    top_k : int, default 100
        Suspects to return.
    layer : str, optional
        Feature layer (default the model's ``features``).
    batch_size : int, default 500
    seed : int, default 0
        Seed of the fitting sample.
    progress : bool, optional
        Show a progress bar of partitions.

    Returns
    -------
    dict
        Plain data (schema ``mlwarden.sharded-scan/1``): ``samples``,
        ``flagged``, ``flagged_by``, per-class counts, ``suspects`` and the
        engine's description.

    Raises
    ------
    MlwardenError
        Invalid settings, or unreadable shards.
    """
    owner = "scan_sharded"
    batch_size = check_int(batch_size, "batch_size", owner, low=1)
    partition_size = check_int(partition_size, "partition_size", owner, low=1)
    partition_size = -(-partition_size // batch_size) * batch_size
    fit_samples = check_int(fit_samples, "fit_samples", owner, low=1)
    top_k = check_int(top_k, "top_k", owner, low=1)
    runner = get_engine(engine, scheduler=scheduler, workers=workers) if isinstance(engine, str) else engine
    if not detectors:
        raise ValueError("scan_sharded needs at least one detector")
    started = time.perf_counter()

    partitions = dataset.partitions(partition_size)
    fit_indices = _choose_fit_indices(len(dataset), fit_samples, seed)
    payload = ScanPayload(dataset, model, layer, batch_size, fit_indices, top_k)
    bar = tqdm(total=2 * len(partitions), desc="partitions", unit="part", disable=None if progress is None else not progress)
    with runner:
        fit_parts = _run_phase(runner, payload, "fit", partitions, partition_size, bar)
        features = np.concatenate([part["features"] for part in fit_parts])
        labels = np.concatenate([part["labels"] for part in fit_parts])
        fit_decisions = []
        for detector in detectors:
            detector.fit(features, labels)
            fit_decisions.append(detector.training_decisions(labels))
        del features
        payload.detectors = list(detectors)
        payload.fit_decisions = np.stack(fit_decisions)
        scored = _run_phase(runner, payload, "score", partitions, partition_size, bar)
    bar.close()

    return {
        "schema": SCAN_SCHEMA,
        "data": {
            "path": str(dataset.path),
            "format": dataset.format,
            "shards": len(dataset.shards),
            "samples": len(dataset),
            "shape": list(dataset.sample_shape),
        },
        "detectors": [{"name": d.name, "settings": _plain(d.settings()), "reason": d.reason} for d in detectors],
        "fit": {"samples": len(fit_indices), "seed": seed},
        "partition_size": partition_size,
        "samples": sum(part["samples"] for part in scored),
        "flagged": sum(part["flagged"] for part in scored),
        "flagged_by": _add_counts(part["flagged_by"] for part in scored),
        "flagged_per_class": _add_counts(part["flagged_per_class"] for part in scored),
        "samples_per_class": _add_counts(part["samples_per_class"] for part in scored),
        "suspects": merge_suspects([part["suspects"] for part in scored], top_k),
        "seconds": time.perf_counter() - started,
        "engine": {**runner.describe(), "partitions": len(partitions)},
    }


def _run_phase(
    runner: Engine, payload: ScanPayload, phase: str, partitions: list[Partition], partition_size: int, bar: Any
) -> list[dict[str, Any]]:
    """Run one pass over every partition and return the results in partition order."""
    units = [ScanUnit(phase, partition) for partition in partitions]
    results: dict[ScanUnit, dict[str, Any]] = {}
    run_blocks = getattr(runner, "run_blocks", None)
    if callable(run_blocks):
        images, labels = payload.dataset.to_dask(partition_size)
        image_blocks = dict(zip(partitions, images.to_delayed().ravel()))
        label_blocks = dict(zip(partitions, labels.to_delayed().ravel()))
        outcomes = run_blocks(scan_partition, payload, units, lambda unit: (image_blocks[unit.partition], label_blocks[unit.partition]))
    else:
        outcomes = runner.run(scan_partition, payload, units)
    for unit, result in outcomes:
        results[unit] = result
        bar.update(1)
    return [results[unit] for unit in units]


def _add_counts(counts: Any) -> dict[str, int]:
    total: dict[str, int] = {}
    for part in counts:
        for key, value in part.items():
            total[key] = total.get(key, 0) + value
    return dict(sorted(total.items(), key=lambda item: (len(item[0]), item[0])))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return repr(value)

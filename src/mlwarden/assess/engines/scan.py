"""Scan a sharded data set with :class:`~mlwarden.defenses.poisoning.scan.DataScanner` on an engine.

The scanning core does two passes over shards; this module runs both on the
engine's workers, one partition of at most ``partition_size`` samples per
unit:

1. **features**: each unit reads its partition and computes its features
   (the model's, through :class:`ModelFeatures`, or the pixels). The calling
   process feeds the partitions to :meth:`DataScanner.fit` as they arrive.
   The fit keeps at most ``fit_samples`` rows, chosen by a hash of the
   global index, so neither the arrival order nor the partitioning changes
   the fit sample.
2. **score**: the fitted scanner travels to the workers once. Each unit
   calls :meth:`DataScanner.score_shard` and :meth:`DataScanner.suspects` on
   its partition and returns its top ``top_k`` suspects with its counts.
   :func:`~mlwarden.defenses.poisoning.scan.merge_top_k` merges them into the
   exact global top k.

Memory per worker is one partition with its features. The calling process
holds the fit sample, one partition's features while it feeds the fit, and
the partitions' suspect lists. With the Dask engine the partitions are the
chunks of a Dask array (:meth:`~mlwarden.data.shards.ShardedDataset.to_dask`),
computed on the worker that uses them; the local engine's workers read their
partition themselves. Every worker must see the shards at the same path.

Limitations: the features of the first pass travel to the calling process
(for LeNet-5, 84 floats per sample), and partitions finished before the fit
consumes them wait in the workers' memory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..._validation import check_int
from ...data.shards import Partition, ShardedDataset
from ...defenses.poisoning.features import extract_features
from ...defenses.poisoning.scan import DataScanner, ScanConfig, ScanReport, Shard, merge_top_k
# The in-process scan's own helpers, so both scans word class names and settings alike.
from ...defenses.poisoning.scan import _name, _plain
from .base import Engine, get_engine

__all__ = ["ScanUnit", "ScanPayload", "ModelFeatures", "scan_sharded", "scan_partition"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanUnit:
    """One pass over one partition: ``features`` for the fit, ``score`` for the suspects."""

    phase: str
    partition: Partition

    @property
    def id(self) -> str:
        """Readable name for task keys and logs."""
        return f"{self.phase}.{self.partition.id}"


class ModelFeatures:
    """Features of images from a model (its ``features(x)`` method, or a named layer), batch by batch.

    Batches start at the first row of each partition, so every engine
    computes the same batches as long as it uses the same partitions.
    """

    def __init__(self, model: nn.Module, *, layer: str | None = None, batch_size: int = 500) -> None:
        self.model = model
        self.layer = layer
        self.batch_size = check_int(batch_size, "batch_size", "ModelFeatures", low=1)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return extract_features(self.model, torch.from_numpy(images), layer=self.layer, batch_size=self.batch_size)


@dataclass
class ScanPayload:
    """Inputs of every scan unit: the data set, the feature function, and after the fit the fitted scanner."""

    dataset: ShardedDataset
    featurize: Callable[[np.ndarray], np.ndarray] | None
    top_k: int | None
    class_names: tuple[str, ...] | None
    scanner: DataScanner | None = None


def scan_partition(
    unit: ScanUnit, payload: ScanPayload, images: np.ndarray | None = None, labels: np.ndarray | None = None
) -> dict[str, Any]:
    """Run one pass on one partition; read the partition unless the engine passes its blocks."""
    partition = unit.partition
    if images is None or labels is None:
        images, labels = payload.dataset.read(partition)
    features = images if payload.featurize is None else payload.featurize(images)
    shard = Shard(features, labels, partition.offset)
    if unit.phase == "features":
        return {"shard": shard}

    scanner = payload.scanner
    assert scanner is not None  # set between the two passes
    scores = scanner.score_shard(shard)
    flagged = scores.suspicion > 0
    per_class = {
        int(label): [int((scores.labels == label).sum()), int(((scores.labels == label) & flagged).sum())]
        for label in np.unique(scores.labels)
    }
    return {
        "rows": len(shard),
        "flagged": int(flagged.sum()),
        "per_detector": [int(scores.flagged_by[row].sum()) for row in range(len(scanner.detectors))],
        "per_class": per_class,
        "suspects": scanner.suspects(scores, payload.top_k, payload.class_names),
    }


def scan_sharded(
    dataset: ShardedDataset,
    *,
    config: ScanConfig | None = None,
    featurize: Callable[[np.ndarray], np.ndarray] | None = None,
    detector_settings: dict[str, dict[str, Any]] | None = None,
    engine: str | Engine = "local",
    scheduler: str | None = None,
    workers: int | None = None,
    partition_size: int = 10_000,
    class_names: Sequence[str] | None = None,
    progress: bool | None = None,
) -> ScanReport:
    """Scan a sharded data set for suspect samples on an engine; return the exact global top-k and a summary.

    Parameters
    ----------
    dataset : ShardedDataset
    config : ScanConfig, optional
        Detectors, fit sample size, PCA components, ``top_k`` and seed.
    featurize : callable, optional
        Maps a partition's images (float32, (n, C, H, W)) to features, such as
        :class:`ModelFeatures`; it must be picklable. Default: the pixels.
    detector_settings : dict, optional
        Detector name -> constructor settings.
    engine, scheduler, workers
        Where partitions run (see :func:`~mlwarden.assess.engines.get_engine`).
    partition_size : int, default 10000
        Most samples per unit, the memory budget of one worker task. Use a
        multiple of the feature batch size, so that batches match a scan of
        the whole set.
    class_names : sequence of str, optional
    progress : bool, optional
        Show a progress bar of partitions.

    Returns
    -------
    ScanReport
        The suspects and the summary of :meth:`DataScanner.scan`, with
        ``engine`` (name, workers, partitions) added to the summary.

    Raises
    ------
    MlwardenError
        Invalid settings, unreadable shards, or data the scanner rejects.
    """
    partition_size = check_int(partition_size, "partition_size", "scan_sharded", low=1)
    runner = get_engine(engine, scheduler=scheduler, workers=workers) if isinstance(engine, str) else engine
    scanner = DataScanner(config, detector_settings=detector_settings, progress=False)
    started = time.perf_counter()
    partitions = dataset.partitions(partition_size)
    names = None if class_names is None else tuple(class_names)
    payload = ScanPayload(dataset, featurize, scanner.config.top_k, names)
    bar = tqdm(total=2 * len(partitions), desc="partitions", unit="part", disable=None if progress is None else not progress)
    with runner:
        with closing(_run_phase(runner, payload, "features", partitions, partition_size)) as featured:
            scanner.fit(_shards(featured, bar))
        payload.scanner = scanner
        scored = []
        with closing(_run_phase(runner, payload, "score", partitions, partition_size)) as results:
            for _, result in results:
                scored.append(result)
                bar.update(1)
    bar.close()

    suspects = merge_top_k([part["suspects"] for part in scored], scanner.config.top_k)
    summary = _summary(scanner, scored, suspects, names)
    summary["seconds"] = time.perf_counter() - started
    summary["engine"] = {**runner.describe(), "partitions": len(partitions), "partition_size": partition_size}
    logger.info("sharded scan: %d of %d rows flagged in %d partitions", summary["flagged"], summary["rows"], len(partitions))
    return ScanReport(suspects, summary)


def _shards(results: Iterator[tuple[ScanUnit, dict[str, Any]]], bar: Any) -> Iterator[Shard]:
    for _, result in results:
        bar.update(1)
        yield result["shard"]


def _run_phase(
    runner: Engine, payload: ScanPayload, phase: str, partitions: list[Partition], partition_size: int
) -> Generator[tuple[ScanUnit, dict[str, Any]], None, None]:
    """Run one pass over every partition; yield each unit's result as it finishes."""
    units = [ScanUnit(phase, partition) for partition in partitions]
    run_blocks = getattr(runner, "run_blocks", None)
    if not callable(run_blocks):
        return runner.run(scan_partition, payload, units)
    # Each partition is one chunk of a Dask array, read by the worker that uses it.
    images, labels = payload.dataset.to_dask(partition_size)
    image_blocks = dict(zip(partitions, images.to_delayed().ravel()))
    label_blocks = dict(zip(partitions, labels.to_delayed().ravel()))
    return run_blocks(scan_partition, payload, units, lambda unit: (image_blocks[unit.partition], label_blocks[unit.partition]))


def _summary(
    scanner: DataScanner, scored: list[dict[str, Any]], suspects: list[Any], class_names: tuple[str, ...] | None
) -> dict[str, Any]:
    """Return the summary of :meth:`DataScanner.scan` from the partitions' counts."""
    per_class: dict[int, list[int]] = {}
    for part in scored:
        for label, (rows, flagged) in part["per_class"].items():
            counts = per_class.setdefault(label, [0, 0])
            counts[0] += rows
            counts[1] += flagged
    config = scanner.config
    return {
        "rows": scanner.rows_seen_,
        "flagged": sum(part["flagged"] for part in scored),
        "reported": len(suspects),
        "fit_rows": int(len(scanner.fit_indices_) if scanner.fit_indices_ is not None else 0),
        "detectors": [
            {"name": detector.name, "settings": _plain(detector.settings()), "flagged": sum(part["per_detector"][row] for part in scored)}
            for row, detector in enumerate(scanner.detectors)
        ],
        "classes": [
            {"label": label, "name": _name(label, class_names), "rows": rows, "flagged": flagged}
            for label, (rows, flagged) in sorted(per_class.items())
        ],
        "config": {
            "detectors": list(config.detectors),
            "fit_samples": config.fit_samples,
            "components": config.components,
            "min_class_samples": config.min_class_samples,
            "top_k": config.top_k,
            "seed": config.seed,
        },
    }

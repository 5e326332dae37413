"""``mlwarden scan-data``: rank the samples of a labeled data set by how likely they are poisoned.

The command reads the data in shards, optionally maps images to a model's
features, and runs :class:`mlwarden.defenses.poisoning.DataScanner`. It
writes ``suspects.csv`` (most suspect first), ``summary.json`` and
``summary.md`` into the output directory and prints the per-class table.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data.labeled_files import LabeledFile, open_labeled_file
from ..defenses.poisoning import POISON_DETECTORS, DataScanner, ScanConfig, Shard, extract_features
from ..defenses.poisoning.scan_output import summary_table, write_scan_outputs
from ..assess.engines.base import ENGINE_NAMES
from .._validation import check_output_path
from ..errors import ParameterError

__all__ = ["register", "run"]

# Features are computed once and kept for the second pass when they take at most this many bytes.
_FEATURE_CACHE_BYTES = 512 * 2**20
# Batch size of the model features on the engines: extract_features's default, as in the in-process scan.
_FEATURE_BATCH = 1000


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "scan-data",
        help="find suspect (poisoned or mislabeled) samples in a labeled data set",
        description="Scan a labeled data set (IDX directory or file, .npy, .npz, or CSV with a label column) with "
        "poisoning detectors and write suspects.csv (row index, score, reason; most suspect first), summary.json "
        "and summary.md.",
    )
    parser.add_argument("path", type=Path, help="IDX directory or file, .npy, .npz or .csv file")
    parser.add_argument(
        "--label-column", default=None, help="CSV: name of the label column (default 'label'); 2-D .npy: column index"
    )
    parser.add_argument("--labels", type=Path, default=None, help="labels file (.npy or IDX) for a .npy or IDX samples file")
    parser.add_argument("--split", default="train", choices=("train", "test"), help="split of an IDX directory (default train)")
    parser.add_argument("--output", type=Path, default=None, help="output directory (default scan-<name of PATH>)")
    parser.add_argument(
        "--model",
        default=None,
        help="scan in this model's feature space (zoo name such as lenet5, or a weights file); default the raw values",
    )
    parser.add_argument("--layer", default=None, help="submodule whose output is the feature space (default model.features)")
    parser.add_argument(
        "--detectors",
        default="label-noise,isolation-forest",
        help=f"comma-separated detectors, from {', '.join(POISON_DETECTORS)} (default label-noise,isolation-forest)",
    )
    parser.add_argument("--top", type=int, default=None, help="report at most this many suspects (default every flagged row)")
    parser.add_argument("--fit-samples", type=int, default=20000, help="rows used to fit the detectors (default 20000)")
    parser.add_argument(
        "--components", type=int, default=50, help="PCA dimensions the detectors see; 0 keeps all values (default 50)"
    )
    parser.add_argument("--shard-size", type=int, default=10000, help="rows read and scored at a time (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fit sample and the detectors (default 0)")
    parser.add_argument(
        "--engine",
        choices=ENGINE_NAMES,
        default=None,
        help="scan PATH as a folder of shards (.npy pairs, .npz, Parquet or IDX; see docs/dask.md) in partitions of "
        "--shard-size rows on a process pool (local) or a Dask cluster (dask; needs pip install 'mlwarden[dask]'); "
        "default: read PATH in this process",
    )
    parser.add_argument(
        "--scheduler", metavar="ADDRESS", help="with --engine dask, a running Dask scheduler (default: a local cluster)"
    )
    parser.add_argument("--workers", type=int, help="with --engine, worker processes of the pool or local cluster")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    detectors = tuple(name.strip() for name in args.detectors.split(",") if name.strip())
    for name in detectors:
        if name not in POISON_DETECTORS:
            raise ParameterError(f"--detectors: unknown detector {name!r}; choose from {', '.join(POISON_DETECTORS)}", value=name)
    if args.shard_size < 1:
        raise ParameterError(f"--shard-size must be at least 1, got {args.shard_size}", value=args.shard_size)
    # Check the output folder before the scan, which can take long, so a bad path fails at once.
    check_output_path(args.output or _default_output(args.path), "scan-data", folder=True)
    config = ScanConfig(
        detectors=detectors,
        fit_samples=args.fit_samples,
        components=args.components or None,
        top_k=args.top,
        seed=args.seed,
    )
    if args.engine is not None:
        return _run_on_engine(args, config, detectors)
    data = open_labeled_file(args.path, label_column=args.label_column, labels=args.labels, split=args.split)
    model = _feature_model(args.model) if args.model else None
    if model is not None and not data.is_image:
        raise ParameterError(
            f"--model needs images (C, H, W), but {args.path} holds rows of {data.sample_shape[0]} values", value=args.model
        )
    shards = _ShardSource(data, args.shard_size, model, args.layer)
    report = DataScanner(config, progress=None).scan(shards, class_names=data.class_names)
    output = args.output or _default_output(args.path)
    source = {"path": str(args.path), "format": data.format, "model": args.model or "raw values", "detectors": ",".join(detectors)}
    paths = write_scan_outputs(report, output, source=source)

    _print_table(summary_table(report))
    for rank, suspect in enumerate(report.suspects[:10], start=1):
        print(f"{rank:>3}. row {suspect.index}  score {suspect.score:.3g}  label {suspect.label}: {suspect.reason}")
    print(f"{report.summary['flagged']} of {report.summary['rows']} rows flagged; wrote {paths['suspects']} and {paths['markdown']}")
    return 0


class _ShardSource:
    """Callable giving a fresh iterator of shards, with features computed once when they fit the cache."""

    def __init__(self, data: LabeledFile, shard_size: int, model: torch.nn.Module | None, layer: str | None) -> None:
        self.data, self.shard_size, self.model, self.layer = data, shard_size, model, layer
        self._cache: list[Shard] | None = None

    def __call__(self) -> Iterator[Shard]:
        if self._cache is not None:
            yield from self._cache
            return
        cache: list[Shard] | None = []
        cached_bytes = 0
        bar = tqdm(total=self.data.rows, desc="reading", unit="row", disable=None, leave=False)
        for samples, labels, offset in self.data.shards(self.shard_size):
            features = samples if self.model is None else extract_features(self.model, torch.from_numpy(samples), layer=self.layer)
            shard = Shard(features, labels, offset)
            if cache is not None:
                cached_bytes += features.nbytes
                if cached_bytes <= _FEATURE_CACHE_BYTES:
                    cache.append(shard)
                else:
                    cache = None
            bar.update(len(labels))
            yield shard
        bar.close()
        self._cache = cache


def _run_on_engine(args: argparse.Namespace, config: ScanConfig, detectors: tuple[str, ...]) -> int:
    """Scan a folder of shards partition by partition on the local or Dask engine."""
    from ..assess.engines.scan import ModelFeatures, scan_sharded
    from ..data.shards import open_sharded

    dataset = open_sharded(args.path)
    model = _feature_model(args.model) if args.model else None
    featurize = None if model is None else ModelFeatures(model, layer=args.layer, batch_size=_FEATURE_BATCH)
    report = scan_sharded(
        dataset,
        config=config,
        featurize=featurize,
        engine=args.engine,
        scheduler=args.scheduler,
        workers=args.workers,
        partition_size=args.shard_size,
    )
    output = args.output or _default_output(args.path)
    source = {
        "path": str(args.path),
        "format": f"{dataset.format} shards",
        "model": args.model or "raw values",
        "detectors": ",".join(detectors),
        "engine": args.engine,
    }
    paths = write_scan_outputs(report, output, source=source)
    _print_table(summary_table(report))
    print(f"{report.summary['flagged']} of {report.summary['rows']} rows flagged; wrote {paths['suspects']} and {paths['markdown']}")
    return 0


def _default_output(path: Path) -> Path:
    return Path(f"scan-{path.stem or path.name}")


def _feature_model(spec: str) -> torch.nn.Module:
    from ..models import resolve_model

    return resolve_model(spec).model


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for number, row in enumerate(rows):
        print("  ".join(cell.ljust(width) if column == 0 else cell.rjust(width) for column, (cell, width) in enumerate(zip(row, widths))))
        if number == 0:
            print("  ".join("-" * width for width in widths))

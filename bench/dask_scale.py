"""Scale-out benchmark: engines on one machine, Dask's malloc-trim setting, sharded scans.

Usage::

    .venv/bin/python bench/dask_scale.py [--samples 10000] [--repeats 2] [--json FILE]
        [--part assess|scan|all] [--scan-base 5000]

Each configuration runs in a fresh Python process, so that environment
variables exported by one Dask nanny never leak into the next, and the
parent samples the whole process tree (the run, its pool or cluster
workers) every 50 ms for peak resident memory and CPU time.

- ``assess``: a ``--samples``-image Fashion-MNIST assessment (FGSM and
  BIM with 10 steps, batch 500, shards of 2,000 images) run in-process
  (``run_assessment``), on the local engine with 1 and 2 workers, and on a
  local Dask cluster with 1 and 2 workers, with Dask's default
  ``MALLOC_TRIM_THRESHOLD_=65536`` and with it unset (the engine's default).
- ``scan``: a k-nearest-neighbour poisoning scan on LeNet-5 features
  (:func:`mlwarden.assess.engines.scan.scan_sharded`) of sharded sets of 1x,
  4x and 16x ``--scan-base`` training images, written as ``.npy`` shards of
  ``--scan-base`` images in a temporary folder; the partition budget and the
  fitting sample are ``--scan-base`` samples, on the local engine and on a
  local Dask cluster, 2 workers each.

The script prints a Markdown table per part and the per-unit cost from
which the 10-node estimate in ``docs/benchmarks.md`` is computed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ATTACKS = [("fgsm", {}), ("bim", {"steps": 10})]
BATCH_SIZE = 500
SHARD_SIZE = 2000


# --- child side: run one configuration ----------------------------------------------------------


def run_assess_child(config: dict[str, Any]) -> dict[str, Any]:
    from mlwarden.assess import AttackSpec, Plan, run_assessment
    from mlwarden.assess.engines import LocalEngine, run_plan

    plan = Plan(limit=config["samples"], batch_size=BATCH_SIZE, attacks=tuple(AttackSpec(n, s) for n, s in ATTACKS))
    started = time.perf_counter()
    if config["engine"] == "in-process":
        results = run_assessment(plan, progress=False)
        engine_info: dict[str, Any] = {}
    elif config["engine"] == "local":
        results = run_plan(plan, engine=LocalEngine(workers=config["workers"]), shard_size=SHARD_SIZE, progress=False)
        engine_info = results["engine"]
    else:
        from mlwarden.assess.engines.dask import DaskEngine

        engine = DaskEngine(workers=config["workers"], malloc_trim_threshold=config["trim"])
        results = run_plan(plan, engine=engine, shard_size=SHARD_SIZE, progress=False)
        engine_info = results["engine"]
    wall = time.perf_counter() - started
    return {
        "wall_seconds": wall,
        "units": engine_info.get("units"),
        "unit_seconds": engine_info.get("unit_seconds"),
        "accuracy": [attack["accuracy"] for attack in results["attacks"]],
    }


def run_scan_child(config: dict[str, Any]) -> dict[str, Any]:
    from mlwarden.assess.engines import LocalEngine
    from mlwarden.assess.engines.scan import ModelFeatures, scan_sharded
    from mlwarden.data.shards import open_sharded
    from mlwarden.defenses.poisoning.scan import ScanConfig
    from mlwarden.models import load_pretrained

    model, _ = load_pretrained("lenet5")
    engine: Any = LocalEngine(workers=config["workers"]) if config["engine"] == "local" else "dask"
    started = time.perf_counter()
    report = scan_sharded(
        open_sharded(config["folder"]),
        config=ScanConfig(detectors=("knn",), fit_samples=config["fit_samples"], top_k=100),
        featurize=ModelFeatures(model, batch_size=BATCH_SIZE),
        engine=engine,
        workers=None if config["engine"] == "local" else config["workers"],
        partition_size=config["partition_size"],
        progress=False,
    )
    return {"wall_seconds": time.perf_counter() - started, "samples": report.summary["rows"], "flagged": report.summary["flagged"]}


# --- parent side: launch, sample the process tree -------------------------------------------------


class TreeSampler:
    """Samples the resident memory and CPU time of a process and all its descendants."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak_rss = 0
        self.cpu_by_pid: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for process in processes:
                try:
                    total += process.memory_info().rss
                    times = process.cpu_times()
                    self.cpu_by_pid[process.pid] = times.user + times.system
                except psutil.NoSuchProcess:
                    continue
            self.peak_rss = max(self.peak_rss, total)
            time.sleep(self.interval)

    @property
    def cpu_seconds(self) -> float:
        return sum(self.cpu_by_pid.values())


def launch(config: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration in a fresh process and return its figures with peak memory and CPU time."""
    environment = {key: value for key, value in os.environ.items() if key != "MALLOC_TRIM_THRESHOLD_"}
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", json.dumps(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )
    with TreeSampler(process.pid) as sampler:
        stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"configuration {config} failed:\n{stderr[-3000:]}")
    figures = json.loads(stdout.strip().splitlines()[-1])
    figures.update(peak_rss_mib=sampler.peak_rss / 2**20, cpu_seconds=sampler.cpu_seconds, config=config)
    return figures


def best_of(config: dict[str, Any], repeats: int) -> dict[str, Any]:
    """Return the run with the lowest wall time of ``repeats`` runs (the least disturbed by other load)."""
    runs = [launch(config) for _ in range(repeats)]
    best = min(runs, key=lambda run: run["wall_seconds"])
    best["all_wall_seconds"] = [round(run["wall_seconds"], 2) for run in runs]
    return best


def assess_part(samples: int, repeats: int) -> list[dict[str, Any]]:
    configs = [{"kind": "assess", "engine": "in-process", "workers": 1, "trim": None}]
    configs += [{"kind": "assess", "engine": "local", "workers": n, "trim": None} for n in (1, 2)]
    configs += [{"kind": "assess", "engine": "dask", "workers": n, "trim": t} for n in (1, 2) for t in (None, 65536)]
    results = []
    for config in configs:
        config["samples"] = samples
        result = best_of(config, repeats)
        print(f"  {config['engine']:<10} workers={config['workers']} trim={config['trim']}: {result['wall_seconds']:.1f} s", file=sys.stderr)
        results.append(result)
    return results


def write_npy_shards(folder: Path, copies: int, base: int) -> None:
    """Write ``copies`` shards of the first ``base`` training images as .npy pairs (uint8)."""
    import numpy as np

    from mlwarden.data import load_dataset

    train = load_dataset("fashion-mnist", "train").subset(base)
    images = (train.images.numpy()[:, 0] * 255).round().astype(np.uint8)
    labels = train.labels.numpy().astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for copy in range(copies):
        np.save(folder / f"part-{copy:04d}-images.npy", images)
        np.save(folder / f"part-{copy:04d}-labels.npy", labels)


def scan_part(base: int, repeats: int) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for factor in (1, 4, 16):
            folder = Path(scratch) / f"x{factor}"
            write_npy_shards(folder, factor, base)
            for engine in ("local", "dask"):
                config = {
                    "kind": "scan",
                    "factor": factor,
                    "samples": factor * base,
                    "engine": engine,
                    "workers": 2,
                    "folder": str(folder),
                    "partition_size": base,
                    "fit_samples": base,
                }
                result = best_of(config, repeats)
                print(f"  scan x{factor} {engine}: {result['wall_seconds']:.1f} s, {result['peak_rss_mib']:.0f} MiB", file=sys.stderr)
                results.append(result)
    return results


def markdown_assess(results: list[dict[str, Any]]) -> str:
    by_key = {(r["config"]["engine"], r["config"]["workers"], r["config"]["trim"]): r for r in results}
    lines = [
        "| engine | workers | MALLOC_TRIM_THRESHOLD_ | wall s | ratio to local engine, same workers | CPU s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        config = result["config"]
        local = by_key.get(("local", config["workers"], None))
        ratio = result["wall_seconds"] / local["wall_seconds"] if local and config["engine"] != "in-process" else None
        trim = "-" if config["engine"] != "dask" else ("65536 (Dask default)" if config["trim"] else "unset (mlwarden)")
        lines.append(
            f"| {config['engine']} | {config['workers']} | {trim} | {result['wall_seconds']:.1f} | "
            f"{'-' if ratio is None else f'{ratio:.2f}'} | {result['cpu_seconds']:.0f} | {result['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def markdown_scan(results: list[dict[str, Any]]) -> str:
    lines = ["| data | samples | engine | wall s | peak RSS MiB |", "|---|---|---|---|---|"]
    for result in results:
        config = result["config"]
        lines.append(
            f"| {config['factor']}x | {config['samples']} | {config['engine']} | {result['wall_seconds']:.1f} | "
            f"{result['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--part", choices=("assess", "scan", "all"), default="all")
    parser.add_argument("--scan-base", type=int, default=5000, help="images of the 1x scan set")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args()

    if args.child:
        config = json.loads(args.child)
        result = run_assess_child(config) if config["kind"] == "assess" else run_scan_child(config)
        print(json.dumps(result))
        return

    print(f"machine: {psutil.cpu_count()} CPUs, load average {os.getloadavg()}", file=sys.stderr)
    report: dict[str, Any] = {"cpus": psutil.cpu_count(), "load_before": os.getloadavg()}
    if args.part in ("assess", "all"):
        report["assess"] = assess_part(args.samples, args.repeats)
        print(markdown_assess(report["assess"]))
        per_unit = [r for r in report["assess"] if r["config"]["engine"] == "dask" and r["config"]["workers"] == 1 and not r["config"]["trim"]]
        if per_unit and per_unit[0]["units"]:
            unit_seconds = per_unit[0]["unit_seconds"] / per_unit[0]["units"]
            print(f"\nper-unit cost (1 Dask worker, trim unset): {unit_seconds:.2f} s for {per_unit[0]['units']} units")
    if args.part in ("scan", "all"):
        report["scan"] = scan_part(args.scan_base, args.repeats)
        print(markdown_scan(report["scan"]))
    report["load_after"] = os.getloadavg()
    print(f"load average after: {report['load_after']}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

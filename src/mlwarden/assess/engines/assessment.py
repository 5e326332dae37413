"""Run an assessment plan as work units on an engine and merge the units into ``results.json``.

The model and data are loaded once and the plan is split into units
(:func:`~mlwarden.assess.units.split_plan`). When resuming, the units
already finished in the units directory are skipped. The rest run on the
engine, and each unit's JSON is written as it arrives. Every unit is then
merged into the ``results.json`` content, from which the report is rendered
like from any other results file.

Ctrl-C stops the engine and keeps the unit files written so far; running
again with ``resume=True`` (``mlwarden assess --resume DIR``) picks them up.
"""

from __future__ import annotations

import logging
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..merge import merge_units
from ..payload import AssessmentPayload, content_digest, execute_unit
from ..plan import Plan
from ..poisoning import run_plan_poisoning, split_defense_specs
from ..runner import load_inputs, plan_attacks, results_header
from ..units import clear_unit_files, inputs_fingerprint, read_unit_files, split_plan, write_unit
from .base import Engine, get_engine
from .local import LocalEngine

__all__ = ["run_plan", "UNITS_FOLDER"]

logger = logging.getLogger(__name__)

# Folder of an assessment's output directory that contains the unit files.
UNITS_FOLDER = "units"


def run_plan(
    plan: Plan,
    *,
    engine: str | Engine = "local",
    scheduler: str | None = None,
    workers: int | None = None,
    shard_size: int | None = None,
    units_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Run ``plan`` as work units and return the merged ``results.json`` content.

    Parameters
    ----------
    plan : Plan
    engine : {"local", "dask"} or Engine, default "local"
        Where units run (see :func:`~mlwarden.assess.engines.get_engine`).
    scheduler : str, optional
        Dask scheduler address, with ``engine="dask"``.
    workers : int, optional
        Worker processes of the local pool or local Dask cluster. The local
        engine's default is one per CPU, or none (units run in this process)
        when the data set fits in one shard.
    shard_size : int, optional
        Samples per data shard, rounded up to a multiple of the batch size;
        default four batches. When resuming, the shard size of the finished
        units is kept unless another is given.
    units_dir : path, optional
        Folder for the unit files; without it units stay in memory and the
        run cannot be resumed.
    resume : bool, default False
        Reuse the finished units in ``units_dir``. Without it, unit files
        already there are deleted first.
    progress : bool, optional
        Show a progress bar of units done (default: when on a terminal).

    Raises
    ------
    MlwardenError
        The plan, model, data or engine settings are invalid.
    KeyboardInterrupt
        The run was interrupted; finished units are kept in ``units_dir``.
    """
    started = time.time()
    if resume and units_dir is None:
        raise ValueError("resume=True needs units_dir, the folder of the finished units")
    runner = get_engine(engine, scheduler=scheduler, workers=workers) if isinstance(engine, str) else engine
    loaded, data, bounds = load_inputs(plan)
    payload = AssessmentPayload(loaded.model, data, bounds, plan)
    header = results_header(plan, loaded, data, bounds, started)
    fingerprint = inputs_fingerprint(plan, header, content_digest(payload))

    folder = None if units_dir is None else Path(units_dir)
    if folder is not None and resume and shard_size is None:
        shard_size = _finished_shard_size(folder, fingerprint)
    evasion_defenses = split_defense_specs(plan.defenses)[0]
    units = split_plan(plan, plan_attacks(plan), len(data), fingerprint, shard_size=shard_size, defenses=evasion_defenses)
    if engine == "local" and workers is None and all(unit.start == 0 for unit in units):
        # One shard: starting worker processes (each imports torch) would cost more than it saves.
        runner = LocalEngine(workers=1)
    documents: dict[str, dict[str, Any]] = {}
    if folder is not None and resume:
        documents = read_unit_files(folder, {unit.key for unit in units})
        logger.info("resuming: %d of %d units already finished in %s", len(documents), len(units), folder)
    elif folder is not None and folder.is_dir():
        removed = clear_unit_files(folder)
        if removed:
            logger.info("removed %d unit files of an earlier run from %s", removed, folder)
    pending = [unit for unit in units if unit.key not in documents]
    reused = len(units) - len(pending)

    bar = tqdm(total=len(units), initial=reused, desc="units", unit="unit", disable=None if progress is None else not progress)
    try:
        with closing(runner.run(execute_unit, payload, pending)) as results:
            for unit, document in results:
                if unit.key in documents:
                    logger.warning("unit %s returned twice; keeping the first result", unit.id)
                    continue
                document["fingerprint"] = fingerprint
                documents[unit.key] = document
                if folder is not None:
                    write_unit(folder, unit, document)
                bar.update(1)
    except KeyboardInterrupt:
        where = ""
        if folder is not None:
            where = f"; they are kept in {folder}, continue with: mlwarden assess --resume {folder.parent} (same plan)"
        logger.warning("interrupted: %d of %d units finished%s", len(documents), len(units), where)
        raise
    finally:
        bar.close()

    merged = merge_units(header, units, documents)
    # Poisoning retrains whole models, so it runs here, after the units, and is not resumable.
    poisoning = run_plan_poisoning(plan, loaded.model, data, bounds, progress=progress)
    if poisoning:
        merged["poisoning"] = poisoning
    merged["seconds"] = time.time() - started
    merged["engine"] = {
        **runner.describe(),
        "units": len(units),
        "resumed_units": reused,
        "shard_size": units[0].stop - units[0].start if units else 0,
        "unit_seconds": sum(float(document.get("seconds", 0.0)) for document in documents.values()),
    }
    return merged


def _finished_shard_size(folder: Path, fingerprint: str) -> int | None:
    """Return the shard size of the finished clean units of these inputs in ``folder``, if any."""
    for document in read_unit_files(folder, keys=None).values():
        unit = document.get("unit", {})
        if document.get("fingerprint") == fingerprint and unit.get("kind") == "clean" and unit.get("start") == 0:
            return int(unit["stop"]) - int(unit["start"])
    return None

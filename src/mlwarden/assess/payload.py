"""The payload a worker needs to run work units, and the function it runs for each unit.

An engine ships one :class:`AssessmentPayload` (model, data, bounds, plan)
to each worker once: the process pool passes it to the worker initializer,
Dask scatters it. :func:`execute_unit` then runs one
:class:`~mlwarden.assess.units.WorkUnit` against it and returns the unit's
JSON document.

Limitations: a model built by ``package.module:factory`` is pickled by
reference, so that module must be importable on every worker; TorchScript
models travel as TorchScript archives.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import platform
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from ..data import Dataset, load_dataset
from .context import AssessmentContext
from .plan import Plan
from .runner import plan_attacks, predict_in_batches, run_attack
from .units import UNIT_SCHEMA, WorkUnit

__all__ = ["AssessmentPayload", "execute_unit", "content_digest"]

logger = logging.getLogger(__name__)


@dataclass
class AssessmentPayload:
    """The model and data that every unit of one assessment reads.

    Attributes
    ----------
    model : nn.Module
        The model under assessment, in eval mode.
    data : Dataset
        The whole data set; units read their shard from it by global index.
    bounds : (float, float)
        Input bounds of the model.
    plan : Plan
        The plan (batch size, seed, and the data set's name for attacks that
        load the training split).
    """

    model: nn.Module
    data: Dataset
    bounds: tuple[float, float]
    plan: Plan

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        # ScriptModules cannot be pickled; they travel as a TorchScript archive instead.
        if isinstance(self.model, torch.jit.ScriptModule):
            buffer = io.BytesIO()
            torch.jit.save(self.model, buffer)
            state["model"] = None
            state["_torchscript"] = buffer.getvalue()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        archive = state.pop("_torchscript", None)
        if archive is not None:
            state["model"] = torch.jit.load(io.BytesIO(archive)).eval()
        self.__dict__.update(state)


def content_digest(payload: AssessmentPayload) -> str:
    """Return a SHA-256 of the model's tensors and the data's samples and labels."""
    digest = hashlib.sha256()
    for name, tensor in sorted(payload.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(payload.data.images.contiguous().numpy().tobytes())
    digest.update(payload.data.labels.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _context(payload: AssessmentPayload) -> AssessmentContext:
    """Return the context passed to a unit's attack or defense, built as ``run_assessment`` builds it."""
    plan = payload.plan
    return AssessmentContext(
        test=payload.data,
        load_train=partial(load_dataset, plan.data, "train"),
        seed=plan.seed,
        batch_size=plan.batch_size,
        bounds=payload.bounds,
        progress=False,
    )


def execute_unit(unit: WorkUnit, payload: AssessmentPayload) -> dict[str, Any]:
    """Run one unit and return its JSON document (schema ``mlwarden.unit/1``).

    Raises
    ------
    MlwardenError
        The attack's settings are invalid; engines do not retry these.
    """
    started = time.perf_counter()
    data, plan = payload.data, payload.plan
    body: dict[str, Any]
    if unit.kind == "clean":
        logits = predict_in_batches(payload.model, data.images[unit.start : unit.stop], plan.batch_size)
        body = {
            "clean": {
                "per_sample": {
                    "label": data.labels[unit.start : unit.stop].tolist(),
                    "prediction": logits.argmax(1).tolist(),
                }
            }
        }
    elif unit.kind == "defense":
        from .defended import run_defense

        assert unit.defense is not None  # split_plan gives every defense unit its spec
        record = run_defense(unit.defense, payload.model, data, _context(payload), plan_attacks(plan), progress=False)
        body = {"defense": record}
    else:
        assert unit.attack is not None  # split_plan gives every attack unit its spec
        records = run_attack(
            unit.attack, payload.model, data, _context(payload), None, progress=False, shard=(unit.start, unit.stop)
        )
        body = {"records": records}
    seconds = time.perf_counter() - started
    logger.debug("unit %s done in %.2f s", unit.id, seconds)
    return {
        "schema": UNIT_SCHEMA,
        "key": unit.key,
        "unit": unit.to_dict(),
        **body,
        "seconds": seconds,
        "worker": {"host": platform.node(), "pid": os.getpid(), "threads": torch.get_num_threads()},
    }

"""Work units: an assessment plan split into attack x defense x data shard.

A unit is the smallest piece of an assessment that an engine schedules. It
is the clean predictions of one data shard, or one attack (with every budget
of its sweep) on one shard of the undefended model, or one defense evaluated
against every attack on the whole data set. Each unit returns versioned JSON (schema
``mlwarden.unit/1``) holding per-sample arrays, and
:mod:`mlwarden.assess.merge` joins the units into ``results.json``.

Defense units are not split further: a detector's threshold and ROC AUC and
a smoothed classifier's certification need the whole data set, and splitting
by attack would fit the defense once per attack.

Shards start and stop on multiples of the batch size, so a unit computes
exactly the batches of a run over the whole data set: convolutions may round
differently when the batch composition changes, and aligned shards keep
split and unsplit runs bit-identical.

An attack that must be fitted first (it defines ``prepare``) gets a single
shard covering the whole data set, so it is fitted once, not once per shard.

Each unit has a key derived from the plan's inputs (model hash, data, seed,
batch size, mlwarden version) and the unit's identity. A finished unit file
whose key matches a planned unit is reused by ``--resume``; adding an attack
to a plan therefore reuses the units of the attacks that were already run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from .._validation import check_int
from ..attacks.registry import get_attack_entry
from ..errors import PlanError
from .plan import AttackSpec, DefenseSpec, Plan
from .results import write_json_atomically
from .seeds import attack_identity, derive_seed

__all__ = [
    "UNIT_SCHEMA",
    "SHARD_BATCHES",
    "WorkUnit",
    "shard_ranges",
    "split_plan",
    "inputs_fingerprint",
    "write_unit",
    "read_unit_files",
    "clear_unit_files",
]

logger = logging.getLogger(__name__)

UNIT_SCHEMA = "mlwarden.unit/1"

# Default shard length in batches. It does not depend on the number of workers, so that
# a run resumed on another cluster plans the same units.
SHARD_BATCHES = 4

_UNIT_SUFFIX = ".unit.json"


@dataclass(frozen=True)
class WorkUnit:
    """One schedulable piece of an assessment.

    Attributes
    ----------
    kind : {"clean", "attack", "defense"}
        Clean predictions of a shard, an attack on a shard, or a defense
        against every attack of the plan on the whole data set.
    start, stop : int
        Global sample indices of the shard, ``start:stop``.
    key : str
        Digest of the plan's inputs and the unit's identity; equal keys mean
        equal results.
    attack_index : int
        Position of the attack in the plan, -1 for clean and defense units.
    attack : AttackSpec or None
    defense_index : int
        Position of the defense in the plan, -1 for the undefended model.
    defense : DefenseSpec or None
    seed : int
        Seed of the attack, from the plan's seed and the attack's identity
        (the same for every shard of that attack); 0 for other units, whose
        code derives its own seeds from the plan's.
    """

    kind: str
    start: int
    stop: int
    key: str
    attack_index: int = -1
    attack: AttackSpec | None = None
    defense_index: int = -1
    defense: DefenseSpec | None = None
    seed: int = 0

    @property
    def id(self) -> str:
        """Readable name, unique within a plan, used for file names and task keys."""
        shard = f"{self.start:09d}-{self.stop:09d}"
        if self.kind == "clean":
            return f"clean.{shard}"
        if self.kind == "defense":
            assert self.defense is not None  # defense units always carry their spec
            return f"d{self.defense_index:02d}-{_slug(self.defense.name)}.{shard}"
        assert self.attack is not None  # attack units always carry their spec
        return f"a{self.attack_index:02d}-{_slug(self.attack.name)}.none.{shard}"

    @property
    def group(self) -> tuple[int, int]:
        """``(attack_index, defense_index)``: the units whose shards merge into one set of records."""
        return (self.attack_index, self.defense_index)

    def to_dict(self) -> dict[str, Any]:
        """Return the unit as plain data, as stored in its result file."""
        return {
            "id": self.id,
            "kind": self.kind,
            "start": self.start,
            "stop": self.stop,
            "attack_index": self.attack_index,
            "attack": None if self.attack is None else {"name": self.attack.name, **self.attack.settings},
            "defense_index": self.defense_index,
            "defense": None if self.defense is None else {"name": self.defense.name, **self.defense.settings},
            "seed": self.seed,
        }


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "_", name.lower())


def shard_ranges(samples: int, batch_size: int, shard_size: int | None = None) -> list[tuple[int, int]]:
    """Return ``(start, stop)`` ranges covering ``samples``, each a whole number of batches.

    Parameters
    ----------
    samples : int
        Number of samples in the data set.
    batch_size : int
        Batch size of the plan.
    shard_size : int, optional
        Samples per shard, rounded up to a multiple of ``batch_size``;
        default ``SHARD_BATCHES * batch_size``. The last shard may be shorter.

    Raises
    ------
    ParameterError
        ``shard_size`` is not a positive integer.
    """
    if shard_size is None:
        shard_size = SHARD_BATCHES * batch_size
    shard_size = check_int(shard_size, "shard_size", "assessment", low=1)
    shard_size = -(-shard_size // batch_size) * batch_size
    return [(start, min(start + shard_size, samples)) for start in range(0, samples, shard_size)]


def inputs_fingerprint(plan: Plan, header: dict[str, Any], content_digest: str) -> str:
    """Return a digest of what every unit's result depends on besides its own identity.

    ``header`` is the ``results.json`` header (see
    :func:`mlwarden.assess.runner.results_header`); its model description
    contains the weights' SHA-256 where the model has one. ``content_digest``
    is a digest of the model's tensors and the samples themselves (see
    :func:`mlwarden.assess.payload.content_digest`), so that changed weights
    or data never reuse old units.
    """
    content = {
        "mlwarden_version": __version__,
        "model": header["model"],
        "data": header["data"],
        "content_digest": content_digest,
        "plan": {key: plan.to_dict()[key] for key in ("model", "weights", "data", "split", "limit", "batch_size", "seed")},
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=repr).encode()).hexdigest()


def _unit_key(fingerprint: str, *identity: Any) -> str:
    text = json.dumps([fingerprint, *identity], sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def split_plan(
    plan: Plan,
    attacks: Sequence[AttackSpec],
    samples: int,
    fingerprint: str,
    *,
    shard_size: int | None = None,
    defenses: Sequence[DefenseSpec] = (),
) -> list[WorkUnit]:
    """Return the units of a plan: clean units per shard, attack x shard, then one unit per defense.

    Parameters
    ----------
    plan : Plan
    attacks : sequence of AttackSpec
        The attacks to run (the plan's, or the defaults).
    samples : int
        Number of samples in the data set.
    fingerprint : str
        From :func:`inputs_fingerprint`.
    shard_size : int, optional
        See :func:`shard_ranges`.
    defenses : sequence of DefenseSpec
        Defenses to evaluate against every attack, one unit each.

    Raises
    ------
    PlanError
        An attack name or setting is unknown.
    """
    shards = shard_ranges(samples, plan.batch_size, shard_size)
    units = [WorkUnit("clean", start, stop, _unit_key(fingerprint, "clean", start, stop)) for start, stop in shards]
    identities = [attack_identity(spec.name, spec.settings) for spec in attacks]
    for attack_index, (spec, identity) in enumerate(zip(attacks, identities)):
        seed = derive_seed(plan.seed, identity)
        attack_shards = [(0, samples)] if _needs_preparation(spec) else shards
        for start, stop in attack_shards:
            key = _unit_key(fingerprint, "attack", identity, None, start, stop)
            units.append(WorkUnit("attack", start, stop, key, attack_index, spec, -1, None, seed))
    for defense_index, defense in enumerate(defenses):
        key = _unit_key(fingerprint, "defense", attack_identity(defense.name, defense.settings), identities, 0, samples)
        units.append(WorkUnit("defense", 0, samples, key, -1, None, defense_index, defense))
    return units


def _needs_preparation(spec: AttackSpec) -> bool:
    """Return whether the attack defines ``prepare`` (it is fitted on data before it runs)."""
    entry = get_attack_entry(spec.name)
    try:
        attack, _ = entry.build(spec.settings)
    except TypeError as error:
        raise PlanError(f"attack {spec.label()!r}: {error}", value=spec.label()) from None
    return callable(getattr(attack, "prepare", None))


def write_unit(directory: str | Path, unit: WorkUnit, document: dict[str, Any]) -> Path:
    """Write a unit's result atomically into ``directory`` and return the file's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{unit.id}.{unit.key[:8]}{_UNIT_SUFFIX}"
    return write_json_atomically(path, document, separators=(",", ":"))


def read_unit_files(directory: str | Path, keys: set[str] | None) -> dict[str, dict[str, Any]]:
    """Return the finished units in ``directory`` whose key is in ``keys`` (all when None), by key.

    Files of other plans or inputs are skipped and counted in a log line.
    Unreadable files are skipped with a warning. A run killed while writing
    leaves none, because writes are atomic, but a disk may fail.
    """
    directory = Path(directory)
    found: dict[str, dict[str, Any]] = {}
    foreign = 0
    for path in sorted(directory.glob(f"*{_UNIT_SUFFIX}")):
        try:
            document = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            logger.warning("skipping unreadable unit file %s: %s", path, error)
            continue
        key = document.get("key") if isinstance(document, dict) else None
        if document.get("schema") != UNIT_SCHEMA or not isinstance(key, str) or (keys is not None and key not in keys):
            foreign += 1
            continue
        found[key] = document
    if foreign:
        logger.info("ignored %d unit files in %s that belong to another plan, model or data set", foreign, directory)
    return found


def clear_unit_files(directory: str | Path) -> int:
    """Delete the unit files in ``directory`` (a fresh run replaces them) and return how many there were."""
    paths = list(Path(directory).glob(f"*{_UNIT_SUFFIX}"))
    for path in paths:
        path.unlink()
    return len(paths)

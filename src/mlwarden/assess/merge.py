"""Merge the JSON documents of work units into one ``results.json``.

Every unit contains per-sample arrays for its shard. The merge checks that the
shards of each attack cover every sample exactly once (a lost unit or a
unit counted twice is an error, never a silent gap), joins the arrays in
index order and recomputes every figure from the joined arrays, so the
figures do not depend on how the plan was split or where units ran.

The figures are those of :func:`mlwarden.assess.metrics.summarize_attack`,
computed from the stored per-sample values; norms are stored rounded to six
decimals, so their mean and median may differ from an unsplit in-process
run (``run_assessment``) in the seventh digit. Counts, accuracies and
success rates are equal.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from ..errors import PlanError
from .metrics import _stats, clean_accuracy
from .runner import EXAMPLES_PER_ATTACK
from .units import UNIT_SCHEMA, WorkUnit

__all__ = ["merge_units", "summarize_per_sample", "merge_examples"]

# Fields of an attack record that the merge recomputes from the per-sample arrays.
_SUMMARY_FIELDS = (
    "samples",
    "attacked",
    "successes",
    "accuracy",
    "success_rate",
    "l0",
    "l2",
    "linf",
    "seconds",
    "gradients",
    "queries",
    "gradients_per_sample",
    "queries_per_sample",
)


def merge_units(
    header: dict[str, Any], units: Sequence[WorkUnit], documents: Mapping[str, dict[str, Any]]
) -> dict[str, Any]:
    """Return the ``results.json`` content of a split assessment.

    Parameters
    ----------
    header : dict
        From :func:`mlwarden.assess.runner.results_header`.
    units : sequence of WorkUnit
        Every unit of the plan, from :func:`mlwarden.assess.units.split_plan`.
    documents : mapping
        Unit JSON documents by unit key.

    Raises
    ------
    PlanError
        A unit has no document, or a document does not match its unit (wrong
        schema, shard or number of samples).
    """
    samples = int(header["data"]["samples"])
    for unit in units:
        _check_document(unit, documents.get(unit.key))

    clean_units = sorted((u for u in units if u.kind == "clean"), key=lambda u: u.start)
    _check_cover(clean_units, samples, "clean predictions")
    labels = _join([documents[u.key]["clean"]["per_sample"]["label"] for u in clean_units])
    predictions = _join([documents[u.key]["clean"]["per_sample"]["prediction"] for u in clean_units])
    label_tensor = torch.tensor(labels, dtype=torch.int64)
    clean = {
        "accuracy": clean_accuracy(torch.tensor(predictions, dtype=torch.int64), label_tensor),
        "per_sample": {"label": labels, "prediction": predictions},
    }

    groups: dict[tuple[int, int], list[WorkUnit]] = defaultdict(list)
    for unit in units:
        if unit.kind == "attack":
            groups[unit.group].append(unit)
    attacks: list[dict[str, Any]] = []
    for group in sorted(groups):
        shard_units = sorted(groups[group], key=lambda u: u.start)
        _check_cover(shard_units, samples, shard_units[0].id)
        shard_records = [documents[u.key]["records"] for u in shard_units]
        if len({len(records) for records in shard_records}) != 1:
            raise PlanError(f"the shards of {shard_units[0].id} hold different numbers of budgets", value=group)
        for position in range(len(shard_records[0])):
            attacks.append(_merge_records([records[position] for records in shard_records], label_tensor))
    defense_units = sorted((u for u in units if u.kind == "defense"), key=lambda u: u.defense_index)
    defenses = [documents[u.key]["defense"] for u in defense_units]
    return {**header, "clean": clean, "attacks": attacks, **({"defenses": defenses} if defenses else {})}


def _check_document(unit: WorkUnit, document: dict[str, Any] | None) -> None:
    if document is None:
        raise PlanError(f"unit {unit.id} has no result; run it again (use --resume to keep the finished units)", value=unit.id)
    if document.get("schema") != UNIT_SCHEMA or document.get("key") != unit.key:
        raise PlanError(f"the result of unit {unit.id} belongs to another unit or schema", value=unit.id)
    stored = document.get("unit", {})
    if (stored.get("start"), stored.get("stop")) != (unit.start, unit.stop):
        raise PlanError(f"the result of unit {unit.id} covers another shard: {stored.get('start')}:{stored.get('stop')}", value=unit.id)
    if unit.kind == "defense":
        return
    count = unit.stop - unit.start
    arrays = [document["clean"]["per_sample"]] if unit.kind == "clean" else [r["per_sample"] for r in document["records"]]
    for per_sample in arrays:
        lengths = {name: len(values) for name, values in per_sample.items()}
        if any(length != count for length in lengths.values()):
            raise PlanError(f"the result of unit {unit.id} has per-sample arrays of lengths {lengths}, expected {count}", value=unit.id)


def _check_cover(units: Sequence[WorkUnit], samples: int, what: str) -> None:
    """Raise unless the shards of ``units`` (sorted by start) cover ``0:samples`` once each."""
    position = 0
    for unit in units:
        if unit.start != position:
            problem = "overlap" if unit.start < position else "leave a gap"
            raise PlanError(f"the shards of {what} {problem} at sample {position}", value=unit.id)
        position = unit.stop
    if position != samples:
        raise PlanError(f"the shards of {what} stop at sample {position} of {samples}", value=what)


def _join(arrays: Iterable[list[Any]]) -> list[Any]:
    joined: list[Any] = []
    for array in arrays:
        joined.extend(array)
    return joined


def _merge_records(records: Sequence[dict[str, Any]], labels: torch.Tensor) -> dict[str, Any]:
    """Join the shard records of one attack and budget into one record."""
    per_sample = {name: _join(r["per_sample"][name] for r in records) for name in records[0]["per_sample"]}
    cost = {name: sum(r[name] for r in records) for name in ("seconds", "gradients", "queries")}
    merged = dict(records[0])
    for name in _SUMMARY_FIELDS:
        merged.pop(name, None)
    summary = summarize_per_sample(per_sample, labels, cost)
    # Keep the key order of an unsplit record: descriptive fields, figures, then arrays.
    ordered: dict[str, Any] = {}
    for name, value in merged.items():
        if name == "per_sample":
            ordered.update(summary)
        ordered[name] = value
    ordered["per_sample"] = per_sample
    ordered["examples"] = merge_examples([r["examples"] for r in records])
    return ordered


def summarize_per_sample(per_sample: dict[str, list[Any]], labels: torch.Tensor, cost: dict[str, Any]) -> dict[str, Any]:
    """Return the figures of :func:`~mlwarden.assess.metrics.summarize_attack` from per-sample arrays.

    Parameters
    ----------
    per_sample : dict
        Arrays as written by :func:`~mlwarden.assess.metrics.per_sample_record`.
    labels : torch.Tensor
        int64 true labels of the same samples.
    cost : dict
        ``seconds``, ``gradients`` and ``queries`` summed over the shards.
    """
    predictions = torch.tensor(per_sample["prediction"], dtype=torch.int64)
    success = torch.tensor(per_sample["success"], dtype=torch.bool)
    attacked = ~torch.tensor(per_sample["already_adversarial"], dtype=torch.bool)
    fooled = success & attacked
    count = int(predictions.shape[0])
    attacked_count = int(attacked.sum())
    summary: dict[str, Any] = {
        "samples": count,
        "attacked": attacked_count,
        "successes": int(fooled.sum()),
        "accuracy": float((predictions == labels).float().mean()) if count else 0.0,
        "success_rate": float(success[attacked].float().mean()) if attacked_count else 0.0,
    }
    for norm in ("l0", "l2", "linf"):
        summary[norm] = _stats(torch.tensor(per_sample[norm], dtype=torch.float64)[fooled])
    summary.update(cost)
    summary["gradients_per_sample"] = cost["gradients"] / max(attacked_count, 1)
    if "queries" in per_sample:
        queries = torch.tensor(per_sample["queries"], dtype=torch.int64)
        successful = queries[fooled]
        summary["queries_per_sample"] = {
            **_stats(queries[attacked]),
            "median_successful": float(successful.double().median()) if successful.numel() else None,
        }
    return summary


def merge_examples(shard_examples: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Pick, from the examples of consecutive shards, those an unsplit run picks.

    An unsplit run takes the first successful samples of distinct labels in
    index order, and each shard kept its own first ones. Every sample of the
    global choice is among them: a shard drops a sample only after it found
    enough distinct labels, and by then so had the whole run. Applying the
    same rule to the shards' examples in order therefore gives the same choice.
    """
    chosen: list[dict[str, Any]] = []
    used_labels: set[int] = set()
    for examples in shard_examples:
        for example in examples:
            if len(chosen) == EXAMPLES_PER_ATTACK:
                return chosen
            if example["label"] not in used_labels:
                chosen.append(example)
                used_labels.add(example["label"])
    return chosen

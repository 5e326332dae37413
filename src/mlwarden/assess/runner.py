"""Run an assessment plan: clean accuracy, then every attack over the data in batches.

The runner produces plain data (the content of ``results.json``); rendering
is left to :mod:`mlwarden.report`.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import __version__
from ..attacks.base import model_bounds
from ..attacks.registry import DEFAULT_ATTACKS, get_attack_entry
from ..attacks.result import AttackResult
from ..data import Dataset, load_dataset
from ..errors import DataError, PlanError
from ..models import LoadedModel, check_model_output, resolve_model
from .context import AssessmentContext
from .defended import run_defense
from .metrics import clean_accuracy, per_sample_record, summarize_attack
from .plan import AttackSpec, Plan
from .poisoning import run_poisoning, split_attack_specs, split_defense_specs
from .results import SCHEMA
from .seeds import attack_identity, derive_seed
from .targets import make_targets

__all__ = [
    "run_assessment",
    "run_attack",
    "predict_in_batches",
    "load_inputs",
    "plan_attacks",
    "results_header",
    "EXAMPLES_PER_ATTACK",
]

logger = logging.getLogger(__name__)

EXAMPLES_PER_ATTACK = 4


@torch.no_grad()
def predict_in_batches(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Return the logits of all images, computed batch by batch in eval mode."""
    was_training = model.training
    model.eval()
    outputs = [model(images[start : start + batch_size]) for start in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0)


def run_assessment(plan: Plan, *, progress: bool | None = None) -> dict[str, Any]:
    """Run ``plan`` and return the assessment as plain data (the ``results.json`` content).

    Raises
    ------
    MlwardenError
        The model, data or plan is invalid; the message names the value.
    """
    started = time.time()
    loaded, data, bounds = load_inputs(plan)
    model = loaded.model

    clean_logits = predict_in_batches(model, data.images, plan.batch_size)
    clean_predictions = clean_logits.argmax(1)
    accuracy = clean_accuracy(clean_predictions, data.labels)
    logger.info("clean accuracy of %s on %d samples: %.4f", loaded.name, len(data), accuracy)

    context = AssessmentContext(
        test=data,
        load_train=lambda: load_dataset(plan.data, "train").scaled_to(bounds),
        seed=plan.seed,
        batch_size=plan.batch_size,
        bounds=bounds,
        progress=progress,
    )
    attacks: list[dict[str, Any]] = []
    for spec in plan_attacks(plan):
        attacks.extend(run_attack(spec, model, data, context, clean_logits, progress=progress))
    evasion_defenses, _ = split_defense_specs(plan.defenses)
    defenses = [run_defense(spec, model, data, context, plan_attacks(plan), progress=progress) for spec in evasion_defenses]
    poisoning = run_poisoning(plan, model, data, context, progress=progress) if split_attack_specs(plan.attacks)[1] else []

    return {
        **results_header(plan, loaded, data, bounds, started),
        "clean": {
            "accuracy": accuracy,
            "per_sample": {"label": data.labels.tolist(), "prediction": clean_predictions.tolist()},
        },
        "attacks": attacks,
        **({"defenses": defenses} if defenses else {}),
        **({"poisoning": poisoning} if poisoning else {}),
    }


def load_inputs(plan: Plan) -> tuple[LoadedModel, Dataset, tuple[float, float]]:
    """Load the plan's model and data, check that they fit together, and return them with the input bounds."""
    loaded = resolve_model(plan.model, weights=plan.weights)
    data = load_dataset(plan.data, plan.split).subset(plan.limit)
    bounds = model_bounds(loaded.model, data.bounds if not hasattr(loaded.model, "bounds") else None)
    data = data.scaled_to(bounds)
    _check_labels_fit_model(loaded.model, data)
    check_model_output(loaded.model, data.images[:2], data.num_classes)
    return loaded, data, bounds


def _check_labels_fit_model(model: torch.nn.Module, data: Dataset) -> None:
    """Raise a :class:`DataError` when the data's labels name classes that the model does not output."""
    try:
        with torch.no_grad():
            output = model(data.images[:1])
    except Exception:  # the model check that follows reports a failing forward pass
        return
    if not isinstance(output, torch.Tensor) or output.ndim != 2:
        return
    classes = int(output.shape[1])
    largest = int(data.labels.max()) if len(data.labels) else 0
    if classes < data.num_classes and largest >= classes:
        first = int((data.labels >= classes).nonzero()[0, 0])
        raise DataError(
            f"sample {first} of the {data.name} {data.split} labels is {int(data.labels[first])}, but the model "
            f"outputs {classes} classes (labels 0 to {classes - 1}), while the data set has {data.num_classes}; "
            f"pass a model with {data.num_classes} outputs, or data labeled for this model",
            value=int(data.labels[first]),
        )


def plan_attacks(plan: Plan) -> tuple[AttackSpec, ...]:
    """Return the plan's evasion attacks, or the default attacks when it names no attack at all.

    Poisoning attacks are left out: :func:`mlwarden.assess.poisoning.run_poisoning` runs them.
    """
    if not plan.attacks:
        return tuple(AttackSpec(name) for name in DEFAULT_ATTACKS)
    return split_attack_specs(plan.attacks)[0]


def results_header(
    plan: Plan, loaded: LoadedModel, data: Dataset, bounds: tuple[float, float], started: float
) -> dict[str, Any]:
    """Return the fields of ``results.json`` that describe the run: schema, environment, plan, model and data."""
    return {
        "schema": SCHEMA,
        "mlwarden_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": time.time() - started,
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "plan": plan.to_dict(),
        "model": loaded.describe(),
        "data": {
            "name": data.name,
            "split": data.split,
            "samples": len(data),
            "shape": list(data.images.shape[1:]),
            "bounds": list(bounds),
            "class_names": list(data.class_names),
        },
    }


def run_attack(
    spec: AttackSpec,
    model: nn.Module,
    data: Dataset,
    context: AssessmentContext,
    clean_logits: torch.Tensor | None,
    *,
    progress: bool | None = None,
    shard: tuple[int, int] | None = None,
) -> list[dict[str, Any]]:
    """Run one attack spec over the data; return one record per budget.

    ``shard`` limits the run to the samples ``start:stop`` (global indices,
    a multiple of the batch size apart so that batches match a whole run);
    ``clean_logits`` then covers those samples only, and may be None, in
    which case they are computed when a target mode needs them. Randomness is
    seeded from the plan's seed and the attack's identity (see
    :mod:`mlwarden.assess.seeds`), so shards give the same per-sample results
    as one run.
    """
    entry = get_attack_entry(spec.name)
    start, stop = shard if shard is not None else (0, len(data))
    seed = derive_seed(context.seed, attack_identity(spec.name, spec.settings))
    context = replace(context, seed=seed)
    settings = dict(spec.settings)
    if "seed" in entry.setting_names() and "seed" not in settings and "seed" not in entry.defaults:
        settings["seed"] = seed
    try:
        attack, call = entry.build(settings)
    except TypeError as error:
        raise PlanError(f"attack {spec.label()!r}: {error}", value=spec.label()) from None
    targets = None
    if "target" in call and call["target"] is not None:
        targets = _shard_targets(call["target"], data, seed, clean_logits, start, stop, context.batch_size, model)
    prepare = getattr(attack, "prepare", None)
    fitting_seconds = 0.0
    if callable(prepare):
        began = time.perf_counter()
        prepare(model, context)
        fitting_seconds = time.perf_counter() - began

    budgets = call.get("eps")
    budget_list = budgets if isinstance(budgets, (list, tuple)) else [budgets]
    records = []
    for eps in budget_list:
        result = _attack_in_batches(attack, model, data, targets, eps, context, spec, progress, start, stop)
        record: dict[str, Any] = {
            "name": entry.name,
            "label": spec.label() if len(budget_list) == 1 else f"{spec.label()} (eps={eps:g})",
            "settings": _plain(attack.settings()),
            "eps": eps,
            "norm": getattr(attack, "norm", None),
            "targeted": targets is not None,
            "target": call.get("target"),
            "profile": attack.profile.to_dict(),
            # Queries spent once to fit the attack (a surrogate's labels), shared by every budget of a sweep.
            "fitting_queries": int(getattr(attack, "fitting_queries", 0)),
            **summarize_attack(result),
            "per_sample": per_sample_record(result),
            "examples": _examples(result, offset=start),
        }
        if not records:
            # The fit is shared by every budget of a sweep, so only the first record pays for it.
            record["fitting_seconds"] = fitting_seconds
            record["seconds"] += fitting_seconds
        logger.info(
            "%s: accuracy %.4f, success rate %.4f, %.1f s", record["label"], record["accuracy"], record["success_rate"], record["seconds"]
        )
        records.append(record)
    return records


def _attack_in_batches(
    attack: Any,
    model: nn.Module,
    data: Dataset,
    targets: torch.Tensor | None,
    eps: float | None,
    context: AssessmentContext,
    spec: AttackSpec,
    progress: bool | None,
    first: int = 0,
    end: int | None = None,
) -> AttackResult:
    """Attack the samples ``first:end`` batch by batch; ``targets`` covers those samples only."""
    batch_size = context.batch_size
    end = len(data) if end is None else end
    results: list[AttackResult] = []
    correct = seen = 0
    label = spec.label() if eps is None else f"{spec.name} eps={eps:g}"
    bar = tqdm(total=end - first, desc=label, unit="img", disable=None if progress is None else not progress, leave=False)
    for start in range(first, end, batch_size):
        stop = min(start + batch_size, end)
        batch_targets = None if targets is None else targets[start - first : stop - first]
        result = attack(
            model,
            data.images[start:stop],
            data.labels[start:stop],
            batch_targets,
            eps=eps,
            bounds=context.bounds,
            indices=torch.arange(start, stop),
        )
        results.append(result)
        correct += int(result.robust_correct.sum())
        seen += len(result)
        bar.update(len(result))
        bar.set_postfix(robust_accuracy=f"{correct / seen:.3f}")
    bar.close()
    return AttackResult.concatenate(results)


def _shard_targets(
    mode: Any,
    data: Dataset,
    seed: int,
    clean_logits: torch.Tensor | None,
    start: int,
    stop: int,
    batch_size: int,
    model: nn.Module,
) -> torch.Tensor:
    """Return the targets of the samples ``start:stop``, as a run over the whole data set would choose them."""
    if mode != "least-likely":
        # Random targets are drawn for the whole data set, then cut, so a sample's target ignores the split.
        return make_targets(mode, data.labels, data.num_classes, seed)[start:stop]
    if clean_logits is not None and len(clean_logits) == len(data) and (start, stop) != (0, len(data)):
        clean_logits = clean_logits[start:stop]
    if clean_logits is None:
        clean_logits = predict_in_batches(model, data.images[start:stop], batch_size)
    return make_targets(mode, data.labels[start:stop], data.num_classes, seed, clean_logits)


def _examples(result: AttackResult, offset: int = 0) -> list[dict[str, Any]]:
    """Pick up to four successful samples of different classes, with their images for the figure.

    ``offset`` is the global index of the result's first sample, so that the
    stored indices are global.
    """
    chosen: list[int] = []
    used_labels: set[int] = set()
    candidates = (result.success & result.attacked).nonzero().flatten().tolist()
    for index in candidates:
        label = int(result.labels[index])
        if label not in used_labels:
            chosen.append(index)
            used_labels.add(label)
        if len(chosen) == EXAMPLES_PER_ATTACK:
            break
    examples = []
    for index in chosen:
        examples.append(
            {
                "index": index + offset,
                "label": int(result.labels[index]),
                "clean_prediction": int(result.clean_predictions[index]),
                "adversarial_prediction": int(result.predictions[index]),
                "shape": list(result.inputs.shape[1:]),
                "original": [round(v, 5) for v in result.inputs[index].flatten().tolist()],
                "adversarial": [round(v, 5) for v in result.adversarial[index].flatten().tolist()],
            }
        )
    return examples


def _plain(value: Any) -> Any:
    """Return settings as JSON-friendly values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return repr(value)

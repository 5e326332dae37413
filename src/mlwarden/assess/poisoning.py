"""The poisoning part of an assessment: retrain on poisoned data, detect, retrain on what the defense keeps.

A plan lists poisoning attacks among its attacks; their names come from
:data:`mlwarden.attacks.poisoning.POISONING_ATTACKS`, apart from the
evasion names, and :func:`split_attack_specs` separates the two kinds. Defenses
named in :data:`mlwarden.defenses.poisoning.POISON_DETECTORS` apply to the
poisoning attacks; without any, each attack gets the detectors that answer
its kind (label flips: label noise and k-NN distance; backdoors: spectral
signatures and activation clustering; clean-label: k-NN distance)::

    attacks:
      - name: backdoor
        rate: [0.0, 0.05, 0.1]
        target_class: 0
        train_limit: 10000
        epochs: 5
      - label-flip:rate=0.1
    defenses:
      - spectral-signature
      - label-noise

For each attack and poison rate the training split (its first
``train_limit`` samples) is poisoned, a fresh model of the plan's
architecture is trained on it for ``epochs`` epochs, and the record gives
its clean accuracy on the plan's test data and the backdoor success rate
(triggered test inputs of other classes sent to the target class). Each
detector then looks at the trained model's features of the poisoned set;
its precision and recall against the known poison, and the same accuracy
and backdoor figures of a model retrained on the samples it keeps, follow.

Limitations: the victim is always retrained from scratch with the plan's
architecture (its weights are reset, so the plan's weights serve only as
the attacker's feature extractor for feature collision, which therefore
rarely succeeds here); models without ``features(x)`` are analysed on
their flattened inputs. Tabular attacks need a scikit-learn victim and are
measured by ``bench/poisoning.py`` instead.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..attacks.poisoning import BadNetsBackdoor, FeatureCollision, get_poisoning_entry, is_poisoning_attack
from ..attacks.poisoning.backdoor import backdoor_success_rate
from ..attacks.poisoning.registry import PoisoningEntry
from ..data import Dataset, load_dataset
from ..defenses.poisoning import build_detector, detection_metrics, extract_features, is_poison_detector
from ..errors import PlanError
from ..models import TrainingConfig, evaluate_accuracy, train_model
from .context import AssessmentContext
from .plan import AttackSpec, DefenseSpec, Plan

__all__ = [
    "run_poisoning",
    "run_plan_poisoning",
    "split_attack_specs",
    "split_defense_specs",
    "DEFAULT_DETECTORS",
    "DEFAULT_TRAIN_LIMIT",
    "DEFAULT_EPOCHS",
]

logger = logging.getLogger(__name__)

DEFAULT_TRAIN_LIMIT = 10000
DEFAULT_EPOCHS = 5
DEFAULT_DETECTORS = {
    "labels": ("label-noise", "knn"),
    "backdoor": ("spectral-signature", "activation-clustering"),
    "clean-label": ("knn",),
}


def split_attack_specs(specs: Sequence[AttackSpec]) -> tuple[tuple[AttackSpec, ...], tuple[AttackSpec, ...]]:
    """Return ``(evasion specs, poisoning specs)`` in plan order."""
    poisoning = tuple(spec for spec in specs if is_poisoning_attack(spec.name))
    return tuple(spec for spec in specs if not is_poisoning_attack(spec.name)), poisoning


def split_defense_specs(specs: Sequence[DefenseSpec]) -> tuple[tuple[DefenseSpec, ...], tuple[DefenseSpec, ...]]:
    """Return ``(evasion defense specs, poisoning detector specs)`` in plan order."""
    poisoning = tuple(spec for spec in specs if is_poison_detector(spec.name))
    return tuple(spec for spec in specs if not is_poison_detector(spec.name)), poisoning


def run_poisoning(
    plan: Plan,
    model: nn.Module,
    test: Dataset,
    context: AssessmentContext,
    *,
    progress: bool | None = None,
) -> list[dict[str, Any]]:
    """Run every poisoning attack of the plan at each of its rates; return one record per attack and rate.

    Raises
    ------
    PlanError
        A poisoning attack or detector has an invalid setting.
    """
    _, attack_specs = split_attack_specs(plan.attacks)
    _, detector_specs = split_defense_specs(plan.defenses)
    records: list[dict[str, Any]] = []
    for spec in attack_specs:
        entry = get_poisoning_entry(spec.name)
        settings, assessment = entry.split_settings(spec.settings)
        rates = settings.pop("rate")
        rates = list(rates) if isinstance(rates, (list, tuple)) else [rates]
        train_limit = _positive(assessment.get("train_limit", DEFAULT_TRAIN_LIMIT), "train_limit", spec)
        epochs = _positive(assessment.get("epochs", DEFAULT_EPOCHS), "epochs", spec)
        detectors = detector_specs or tuple(DefenseSpec(name) for name in DEFAULT_DETECTORS[entry.kind])
        train = context.train().subset(train_limit)
        for rate in rates:
            attack = _build(entry, spec, {**settings, "rate": rate, "seed": settings.get("seed", plan.seed)}, model, test, assessment)
            records.append(
                _assess_rate(spec, entry, attack, model, train, test, detectors, epochs, context, progress)
            )
    return records


def run_plan_poisoning(
    plan: Plan, model: nn.Module, test: Dataset, bounds: tuple[float, float], *, progress: bool | None = None
) -> list[dict[str, Any]]:
    """Run the plan's poisoning attacks (none: an empty list) with a context built from the plan."""
    if not split_attack_specs(plan.attacks)[1]:
        return []
    context = AssessmentContext(
        test=test,
        load_train=lambda: load_dataset(plan.data, "train").scaled_to(bounds),
        seed=plan.seed,
        batch_size=plan.batch_size,
        bounds=bounds,
        progress=progress,
    )
    return run_poisoning(plan, model, test, context, progress=progress)


def _assess_rate(
    spec: AttackSpec,
    entry: PoisoningEntry,
    attack: Any,
    model: nn.Module,
    train: Dataset,
    test: Dataset,
    detectors: Sequence[DefenseSpec],
    epochs: int,
    context: AssessmentContext,
    progress: bool | None,
) -> dict[str, Any]:
    started = time.perf_counter()
    shown = {key: value for key, value in spec.settings.items() if key not in ("rate", "train_limit", "epochs")}
    label = f"{AttackSpec(spec.name, shown).label()} (rate={attack.rate:g})"
    bar = tqdm(total=1 + len(detectors), desc=label, unit="model", disable=None if progress is None else not progress, leave=False)
    poisoned = attack.poison(train.images, train.labels)
    poisoned_labels = torch.as_tensor(poisoned.labels)
    victim = _train_fresh(model, poisoned.inputs, poisoned_labels, train, test, epochs, context)
    bar.update(1)

    record: dict[str, Any] = {
        "name": entry.name,
        "label": label,
        "kind": entry.kind,
        "rate": attack.rate,
        "settings": _plain(attack.settings()),
        "profile": attack.profile.to_dict(),
        "train_samples": len(train),
        "epochs": epochs,
        "poisoned": len(poisoned.indices),
        **_effects(victim, attack, test),
        "defenses": [],
    }

    features = _features(victim, poisoned.inputs)
    for defense in detectors:
        detector = build_detector(defense.name, **defense.settings)
        flagged = detector.fit_predict(features, poisoned_labels.numpy())
        metrics = detection_metrics(flagged, poisoned.indices, len(poisoned), detector.training_scores_)
        kept = torch.from_numpy(np.flatnonzero(~flagged))
        retrained = _train_fresh(model, poisoned.inputs[kept], poisoned_labels[kept], train, test, epochs, context)
        record["defenses"].append(
            {
                "name": detector.name,
                "label": defense.label(),
                "settings": _plain(detector.settings()),
                **metrics,
                "removed": int(flagged.sum()),
                "poison_left": int(len(poisoned.indices) - (metrics["true_positives"] or 0)),
                **_effects(retrained, attack, test),
            }
        )
        bar.update(1)
    bar.close()

    record["seconds"] = time.perf_counter() - started
    logger.info(
        "%s: clean accuracy %.4f, backdoor success %s, %d defenses in %.1f s",
        label, record["clean_accuracy"], record["backdoor_success_rate"], len(detectors), record["seconds"],
    )
    return record


def _build(entry: PoisoningEntry, spec: AttackSpec, settings: dict[str, Any], model: nn.Module, test: Dataset, assessment: dict[str, Any]) -> Any:
    try:
        if entry.needs_model:
            index = int(assessment.get("target_index", 0))
            if not 0 <= index < len(test):
                raise PlanError(f"{spec.label()}: target_index {index} is outside the {len(test)} test samples", value=index)
            return entry.factory(model, test.images[index], **settings)
        return entry.factory(**settings)
    except TypeError as error:
        raise PlanError(f"poisoning attack {spec.label()!r}: {error}", value=spec.label()) from None


def _effects(model: nn.Module, attack: Any, test: Dataset) -> dict[str, Any]:
    """Return the clean accuracy, and the backdoor or target success where the attack has one."""
    effects: dict[str, Any] = {
        "clean_accuracy": evaluate_accuracy(model, test.images, test.labels),
        "backdoor_success_rate": None,
        "target_success": None,
    }
    if isinstance(attack, BadNetsBackdoor):
        effects["backdoor_success_rate"] = backdoor_success_rate(model, attack, test.images, test.labels)
    if isinstance(attack, FeatureCollision):
        with torch.no_grad():
            was_training = model.training
            model.eval()
            effects["target_success"] = bool(int(model(attack.target).argmax(1)) == attack.base_class)
            model.train(was_training)
    return effects


def _train_fresh(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    train: Dataset,
    test: Dataset,
    epochs: int,
    context: AssessmentContext,
) -> nn.Module:
    """Return a copy of the model's architecture with reset weights, trained on the given samples."""
    fresh = copy.deepcopy(model)
    torch.manual_seed(context.seed)
    for module in fresh.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    subset = Dataset(images, labels, train.class_names, train.name, "train", train.bounds)
    config = TrainingConfig(epochs=epochs, batch_size=64, seed=context.seed)
    train_model(fresh, subset, test, config, progress=False)
    return fresh.eval()


def _features(model: nn.Module, inputs: torch.Tensor) -> np.ndarray:
    if callable(getattr(model, "features", None)):
        return extract_features(model, inputs)
    return inputs.reshape(len(inputs), -1).numpy()


def _positive(value: Any, name: str, spec: AttackSpec) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PlanError(f"{spec.label()}: {name} must be a positive integer, got {value!r}", value=value)
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return repr(value)

"""Assess defenses: every defense against every attack of the plan, with the standard and the adaptive attack.

For a defense that changes predictions, the standard attack is the plan's
attack run on the defended model as it is (autograd through whatever the
defense computes, one random draw per call). The adaptive attack is the same
attack with the same settings run on :func:`~mlwarden.defenses.evasion.adaptive_model`
(BPDA for non-differentiable steps, EOT for random ones). Both sets of
adversarial inputs are judged by the defense itself. The adaptive accuracy is
the per-sample worst case of the two attacks: a sample counts as robust only
if neither attack fooled the defense, so the adaptive figure is never above
the standard one.

For a detector, the standard attack ignores the detector. The adaptive one
is :func:`~mlwarden.defenses.evasion.detector_aware_attack` with the plan
attack's norm and budget. Attacks without a budget (DeepFool, JSMA) give
each sample the L2 size of its standard perturbation instead. A sample
counts as defended when the model classifies it correctly or the detector
flags it. Detection figures per attack: the true-positive rate at the
threshold set for the target false-positive rate, and the ROC AUC of clean
against successful adversarial inputs.

The work splits like the undefended assessment: :func:`prepare_defense` once
per defense (it fits detectors, deterministically from the plan's seed),
then :func:`evaluate_clean` and :func:`run_defended_attack` per data shard.
Records keep per-sample arrays, and :func:`summarize_defended_attack`
recomputes the figures from them, so shards can be merged.
NOTE: random defenses draw from one generator per pass, so a split run gives
different (equally distributed) draws than an unsplit one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..attacks.registry import get_attack_entry
from ..data import Dataset
from ..defenses.evasion import (
    AdversarialDetector,
    RandomizedSmoothing,
    adaptive_method,
    adaptive_model,
    certified_accuracy,
    detector_aware_attack,
)
from ..defenses.registry import DETECTOR, DefenseEntry, get_defense_entry
from ..errors import PlanError
from .context import AssessmentContext
from .plan import AttackSpec, DefenseSpec
from .seeds import attack_identity, derive_seed
from .targets import make_targets

__all__ = [
    "PreparedDefense",
    "prepare_defense",
    "evaluate_clean",
    "run_defended_attack",
    "run_defense",
    "summarize_defended_attack",
]

logger = logging.getLogger(__name__)

# Salt of the generator that picks the training inputs a detector is fitted on.
_FIT_SALT = 71


@dataclass
class PreparedDefense:
    """A defense built around the assessed model (and fitted, for detectors), ready to evaluate."""

    spec: DefenseSpec
    entry: DefenseEntry
    defense: Any
    evaluation: dict[str, Any]
    seed: int

    @property
    def is_detector(self) -> bool:
        """Whether the defense is a detector rather than a model wrapper."""
        return self.entry.kind == DETECTOR

    def header(self) -> dict[str, Any]:
        """Return the fields of the defense's record that describe it."""
        header: dict[str, Any] = {
            "name": self.entry.name,
            "label": self.spec.label(),
            "kind": self.entry.kind,
            "summary": self.entry.summary,
            "settings": _plain(self.defense.settings()),
            "evaluation": _plain(self.evaluation),
            "profile": self.defense.profile.to_dict(),
            "known_bypass": self.defense.known_bypass,
            "adaptive_method": adaptive_method(self.defense, eot_samples=self.evaluation.get("eot_samples", 10)),
        }
        if self.is_detector:
            header.update(
                {
                    "fit_samples": self.evaluation["fit_samples"],
                    "fpr_target": self.defense.fpr,
                    "threshold": self.defense.threshold_,
                }
            )
        return header


def prepare_defense(spec: DefenseSpec, model: nn.Module, context: AssessmentContext) -> PreparedDefense:
    """Build the defense of ``spec`` around ``model``; fit a detector on the training split.

    The defense's randomness is seeded from the plan's seed and the
    defense's identity, so every worker builds the same defense.
    """
    entry = get_defense_entry(spec.name)
    seed = derive_seed(context.seed, "defense", attack_identity(spec.name, spec.settings))
    defense, evaluation = entry.build(model, replace(context, seed=seed), spec.settings)
    if entry.kind == DETECTOR:
        train = context.train()
        count = min(int(evaluation["fit_samples"]), len(train))
        evaluation["fit_samples"] = count
        chosen = torch.randperm(len(train), generator=context.generator(salt=_FIT_SALT))[:count]
        defense.fit(train.images[chosen], train.labels[chosen])
    return PreparedDefense(spec, entry, defense, evaluation, seed)


def run_defense(
    spec: DefenseSpec,
    model: nn.Module,
    data: Dataset,
    context: AssessmentContext,
    attack_specs: tuple[AttackSpec, ...],
    *,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Evaluate one defense on clean data and against every attack spec; return its ``results.json`` record."""
    started = time.perf_counter()
    prepared = prepare_defense(spec, model, context)
    record = {**prepared.header(), **evaluate_clean(prepared, model, data, context)}
    record["attacks"] = [
        outcome
        for attack_spec in attack_specs
        for outcome in run_defended_attack(prepared, attack_spec, model, data, context, progress=progress)
    ]
    record["seconds"] = time.perf_counter() - started
    return record


# --- clean data -------------------------------------------------------------------------


def evaluate_clean(
    prepared: PreparedDefense,
    model: nn.Module,
    data: Dataset,
    context: AssessmentContext,
    *,
    shard: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Return the defense's figures on the clean samples ``shard`` (default all), with per-sample arrays.

    Model defenses: accuracy (abstentions of randomized smoothing count as
    wrong), and certified accuracy for randomized smoothing. Detectors: the
    model's accuracy, the measured false-positive rate and the accuracy
    when flagged clean inputs count as rejected.
    """
    start, stop = shard if shard is not None else (0, len(data))
    images, labels = data.images[start:stop], data.labels[start:stop]
    defense, batch_size = prepared.defense, context.batch_size
    if prepared.is_detector:
        correct = _logits(model, images, batch_size).argmax(1) == labels
        scores = defense.score_samples(images)
        flagged = defense.flags(scores)
        return {
            "clean_accuracy": _mean(correct),
            "clean_accuracy_with_rejection": _mean(correct & ~flagged),
            "fpr_measured": _mean(flagged),
            "per_sample": {"clean_correct": _ints(correct), "clean_flagged": _ints(flagged), "clean_score": _floats(scores)},
        }
    _reseed(defense, prepared.seed, f"clean:{start}")
    predictions = _predict(defense, images, batch_size, prepared.evaluation)
    figures: dict[str, Any] = {
        "clean_accuracy": _mean(predictions == labels),
        "per_sample": {"clean_prediction": predictions.tolist()},
    }
    if isinstance(defense, RandomizedSmoothing):
        _reseed(defense, prepared.seed, f"certify:{start}")
        figures["certified"] = _certify(defense, images, labels, prepared.evaluation)
    return figures


def _certify(defense: RandomizedSmoothing, images: torch.Tensor, labels: torch.Tensor, evaluation: dict[str, Any]) -> dict[str, Any]:
    limit = evaluation.get("certify_limit")
    images, labels = images[:limit], labels[:limit]
    started = time.perf_counter()
    predictions, radii = defense.certify(images, n0=evaluation["n0"], n=evaluation["n"], alpha=evaluation["alpha"])
    radii_list = [float(r) for r in evaluation["radii"]]
    accuracy = certified_accuracy(predictions, radii, labels, radii_list)
    return {
        "samples": len(labels),
        "n0": evaluation["n0"],
        "n": evaluation["n"],
        "alpha": evaluation["alpha"],
        "sigma": defense.sigma,
        "radii": radii_list,
        "accuracy": [accuracy[r] for r in radii_list],
        "clean_accuracy": _mean(predictions == labels),
        "abstain_rate": _mean(predictions < 0),
        "seconds": time.perf_counter() - started,
        "per_sample": {"prediction": predictions.tolist(), "radius": _floats(radii)},
    }


# --- attacks ----------------------------------------------------------------------------


def run_defended_attack(
    prepared: PreparedDefense,
    spec: AttackSpec,
    model: nn.Module,
    data: Dataset,
    context: AssessmentContext,
    *,
    progress: bool | None = None,
    shard: tuple[int, int] | None = None,
) -> list[dict[str, Any]]:
    """Run one attack spec against the defense, standard and adaptive; return one record per budget.

    Attacks are seeded as the undefended run seeds them (from the plan's
    seed and the attack's identity), so the two runs form paired samples.
    """
    start, stop = shard if shard is not None else (0, len(data))
    attack, budgets, targets, name = _build_attack(spec, model, data, context)
    if targets is not None:
        targets = targets[start:stop]
    clean = evaluate_clean(prepared, model, data, context, shard=(start, stop))["per_sample"] if prepared.is_detector else None
    records = []
    for eps in budgets:
        label = spec.label() if len(budgets) == 1 else f"{spec.label()} (eps={eps:g})"
        record: dict[str, Any] = {"name": name, "label": label, "eps": eps, "norm": getattr(attack, "norm", None)}
        if prepared.is_detector:
            per_sample, seconds, adaptive = _attack_detector(prepared, attack, model, data, context, targets, eps, label, progress, start, stop)
            record.update(summarize_defended_attack(per_sample, clean))
            record["adaptive"].update(adaptive)
        else:
            per_sample, seconds = _attack_model_defense(prepared, attack, data, context, targets, eps, label, progress, start, stop)
            record.update(summarize_defended_attack(per_sample))
        record["standard"]["seconds"], record["adaptive"]["seconds"] = seconds
        record["per_sample"] = per_sample
        logger.info(
            "%s vs %s: accuracy %.4f (standard), %.4f (adaptive)",
            label,
            prepared.spec.label(),
            record["standard"]["accuracy"],
            record["adaptive"]["accuracy"],
        )
        records.append(record)
    return records


def summarize_defended_attack(per_sample: dict[str, list[Any]], clean: dict[str, list[Any]] | None = None) -> dict[str, Any]:
    """Return the ``standard`` and ``adaptive`` figures of one attack from its per-sample arrays.

    ``clean`` contains the detector's clean per-sample arrays of the same
    samples (needed for the ROC AUC); model defenses pass None.
    """
    if clean is None:
        return {
            mode: {"accuracy": _mean(torch.tensor(per_sample[f"{mode}_correct"], dtype=torch.bool))}
            for mode in ("standard", "adaptive", "adaptive_attack_only")
        }
    clean_scores = torch.tensor(clean["clean_score"], dtype=torch.float64)
    clean_correct = torch.tensor(clean["clean_correct"], dtype=torch.bool)
    attacked = torch.tensor(per_sample["attacked"], dtype=torch.bool)
    figures: dict[str, Any] = {}
    for mode in ("standard", "adaptive"):
        fooled = torch.tensor(per_sample[f"{mode}_fooled"], dtype=torch.bool)
        flagged = torch.tensor(per_sample[f"{mode}_flagged"], dtype=torch.bool)
        scores = torch.tensor(per_sample[f"{mode}_score"], dtype=torch.float64)
        successful = fooled & attacked
        figures[mode] = {
            "accuracy": _mean(torch.tensor(per_sample[f"{mode}_defended"], dtype=torch.bool)),
            "successful": int(successful.sum()),
            "tpr": _mean(flagged[successful]) if bool(successful.any()) else None,
            "roc_auc": _roc_auc(clean_scores[clean_correct], scores[successful]),
        }
    return figures


def _build_attack(
    spec: AttackSpec, model: nn.Module, data: Dataset, context: AssessmentContext
) -> tuple[Any, list[Any], torch.Tensor | None, str]:
    """Return the attack, its budgets, the targets of the whole data set and its name."""
    entry = get_attack_entry(spec.name)
    seed = derive_seed(context.seed, attack_identity(spec.name, spec.settings))
    settings = dict(spec.settings)
    if "seed" in entry.setting_names() and "seed" not in settings and "seed" not in entry.defaults:
        settings["seed"] = seed
    try:
        attack, call = entry.build(settings)
    except TypeError as error:
        raise PlanError(f"attack {spec.label()!r}: {error}", value=spec.label()) from None
    targets = None
    if call.get("target") is not None:
        clean_logits = _logits(model, data.images, context.batch_size) if call["target"] == "least-likely" else None
        targets = make_targets(call["target"], data.labels, data.num_classes, seed, clean_logits)
    budgets = call.get("eps")
    return attack, list(budgets) if isinstance(budgets, (list, tuple)) else [budgets], targets, entry.name


def _attack_model_defense(
    prepared: PreparedDefense,
    attack: Any,
    data: Dataset,
    context: AssessmentContext,
    targets: torch.Tensor | None,
    eps: float | None,
    label: str,
    progress: bool | None,
    start: int,
    stop: int,
) -> tuple[dict[str, list[Any]], tuple[float, float]]:
    defense, labels = prepared.defense, data.labels[start:stop]
    view = adaptive_model(defense, eot_samples=prepared.evaluation.get("eot_samples", 10))
    correct: dict[str, torch.Tensor] = {}
    seconds = []
    for mode, target in (("standard", defense), ("adaptive", view)):
        began = time.perf_counter()
        _reseed(defense, prepared.seed, f"{label}:{mode}:attack:{start}")
        adversarial = _adversarial_in_batches(
            attack, target, data, targets, eps, context, f"{label} vs {prepared.spec.label()} ({mode})", progress, start, stop
        )
        _reseed(defense, prepared.seed, f"{label}:{mode}:predict:{start}")
        correct[mode] = _predict(defense, adversarial, context.batch_size, prepared.evaluation) == labels
        seconds.append(time.perf_counter() - began)
    per_sample = {
        "standard_correct": _ints(correct["standard"]),
        "adaptive_correct": _ints(correct["standard"] & correct["adaptive"]),
        "adaptive_attack_only_correct": _ints(correct["adaptive"]),
    }
    return per_sample, (seconds[0], seconds[1])


def _attack_detector(
    prepared: PreparedDefense,
    attack: Any,
    model: nn.Module,
    data: Dataset,
    context: AssessmentContext,
    targets: torch.Tensor | None,
    eps: float | None,
    label: str,
    progress: bool | None,
    start: int,
    stop: int,
) -> tuple[dict[str, list[Any]], tuple[float, float], dict[str, Any]]:
    detector: AdversarialDetector = prepared.defense
    images, labels = data.images[start:stop], data.labels[start:stop]
    clean_correct = _logits(model, images, context.batch_size).argmax(1) == labels
    attacked = clean_correct if targets is None else clean_correct & (labels != targets)

    began = time.perf_counter()
    standard = _adversarial_in_batches(attack, model, data, targets, eps, context, f"{label} vs {detector.name}", progress, start, stop)
    per_sample = {"attacked": _ints(attacked), **_detection_arrays("standard", detector, model, standard, labels, targets, context.batch_size)}
    standard_seconds = time.perf_counter() - began

    began = time.perf_counter()
    budget: float | torch.Tensor
    if eps is not None and getattr(attack, "norm", None) in ("linf", "l2"):
        norm, budget = attack.norm, eps
    else:
        # No L-inf or L2 budget to reuse: give each sample the L2 size of its standard perturbation.
        norm, budget = "l2", (standard - images).flatten(1).norm(dim=1)
    adaptive = _detector_aware_in_batches(prepared, model, data, targets, budget, norm, context, progress, label, start, stop)
    per_sample.update(_detection_arrays("adaptive", detector, model, adaptive, labels, targets, context.batch_size))
    # Worst case per sample: defended only if neither attack produced an undetected error.
    per_sample["adaptive_attack_only_defended"] = per_sample["adaptive_defended"]
    per_sample["adaptive_defended"] = [a & b for a, b in zip(per_sample["standard_defended"], per_sample["adaptive_defended"])]
    described = {"norm": norm, "budget": "per-sample L2 of the standard attack" if isinstance(budget, torch.Tensor) else budget}
    return per_sample, (standard_seconds, time.perf_counter() - began), described


def _detection_arrays(
    mode: str,
    detector: AdversarialDetector,
    model: nn.Module,
    adversarial: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor | None,
    batch_size: int,
) -> dict[str, list[Any]]:
    predictions = _logits(model, adversarial, batch_size).argmax(1)
    fooled = predictions != labels if targets is None else predictions == targets
    scores = detector.score_samples(adversarial)
    flagged = detector.flags(scores)
    return {
        f"{mode}_fooled": _ints(fooled),
        f"{mode}_flagged": _ints(flagged),
        f"{mode}_score": _floats(scores),
        f"{mode}_defended": _ints((predictions == labels) | flagged),
    }


def _adversarial_in_batches(
    attack: Any,
    target: nn.Module,
    data: Dataset,
    targets: torch.Tensor | None,
    eps: float | None,
    context: AssessmentContext,
    description: str,
    progress: bool | None,
    first: int,
    end: int,
) -> torch.Tensor:
    """Return the attack's adversarial inputs against ``target`` for the samples ``first:end``."""
    prepare = getattr(attack, "prepare", None)
    if callable(prepare):
        prepare(target, context)
    parts = []
    bar = tqdm(total=end - first, desc=description, unit="img", disable=None if progress is None else not progress, leave=False)
    for start in range(first, end, context.batch_size):
        stop = min(start + context.batch_size, end)
        result = attack(
            target,
            data.images[start:stop],
            data.labels[start:stop],
            None if targets is None else targets[start - first : stop - first],
            eps=eps,
            bounds=context.bounds,
            indices=torch.arange(start, stop),
        )
        parts.append(result.adversarial)
        bar.update(stop - start)
    bar.close()
    return torch.cat(parts) if parts else data.images[:0]


def _detector_aware_in_batches(
    prepared: PreparedDefense,
    model: nn.Module,
    data: Dataset,
    targets: torch.Tensor | None,
    budget: float | torch.Tensor,
    norm: str,
    context: AssessmentContext,
    progress: bool | None,
    label: str,
    first: int,
    end: int,
) -> torch.Tensor:
    parts = []
    description = f"{label} vs {prepared.spec.label()} (adaptive)"
    bar = tqdm(total=end - first, desc=description, unit="img", disable=None if progress is None else not progress, leave=False)
    for start in range(first, end, context.batch_size):
        stop = min(start + context.batch_size, end)
        parts.append(
            detector_aware_attack(
                model,
                prepared.defense,
                data.images[start:stop],
                data.labels[start:stop],
                eps=budget[start - first : stop - first] if isinstance(budget, torch.Tensor) else budget,
                norm=norm,
                targets=None if targets is None else targets[start - first : stop - first],
                steps=prepared.evaluation["attack_steps"],
                weight=prepared.evaluation["detector_weight"],
                bounds=context.bounds,
                # Keyed by the batch's global start, so a shard draws what the whole run draws.
                generator=context.generator(salt=prepared.seed % 1000 + start + 1),
            )
        )
        bar.update(stop - start)
    bar.close()
    return torch.cat(parts) if parts else data.images[:0]


# --- predictions ------------------------------------------------------------------------


@torch.no_grad()
def _logits(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(images[start : start + batch_size]) for start in range(0, len(images), batch_size)])
    finally:
        model.train(was_training)


def _predict(defense: nn.Module, images: torch.Tensor, batch_size: int, evaluation: dict[str, Any]) -> torch.Tensor:
    """Return the defense's labels; randomized smoothing may abstain (-1), which counts as wrong."""
    if isinstance(defense, RandomizedSmoothing):
        return torch.cat(
            [
                defense.predict(images[start : start + batch_size], n=evaluation["predict_n"], alpha=evaluation["alpha"])
                for start in range(0, len(images), batch_size)
            ]
        )
    return _logits(defense, images, batch_size).argmax(1)


def _reseed(defense: Any, seed: int, purpose: str) -> None:
    """Restart a random defense's draws from a seed named by the pass, so each pass is reproducible."""
    reseed = getattr(defense, "reseed", None)
    if callable(reseed):
        reseed(derive_seed(seed, purpose))


# --- small helpers ----------------------------------------------------------------------


def _roc_auc(clean: torch.Tensor, adversarial: torch.Tensor) -> float | None:
    if len(clean) == 0 or len(adversarial) == 0:
        return None
    from sklearn.metrics import roc_auc_score  # imported here: it is slow to import and only detectors need it

    truth = [0] * len(clean) + [1] * len(adversarial)
    return float(roc_auc_score(truth, torch.cat([clean, adversarial]).tolist()))


def _mean(mask: torch.Tensor) -> float:
    return float(mask.float().mean()) if mask.numel() else 0.0


def _ints(mask: torch.Tensor) -> list[int]:
    return mask.int().tolist()


def _floats(values: torch.Tensor) -> list[float]:
    return [round(float(value), 6) for value in values]


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return repr(value)

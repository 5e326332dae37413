"""Poisoning benchmark: attacks at 0, 5 and 10% poison, each detector, and cleanlab on the same flipped labels.

Usage::

    .venv/bin/python bench/poisoning.py [--part images|tabular|all] [--train 10000] [--epochs 6]
        [--test 5000] [--json FILE]

- ``images``: LeNet-5 trained from scratch on the first ``--train``
  Fashion-MNIST training images for ``--epochs`` epochs (Adam, batch 64),
  evaluated on the first ``--test`` test images. Attacks: random label flips
  and BadNets (3x3 checkerboard in the bottom-right corner, target class 0).
  Each detector runs on the penultimate features of the model trained on
  the poisoned set; the model is then retrained on the samples it keeps.
- ``tabular``: scikit-learn's breast-cancer set (569 rows, 30 features;
  70/30 stratified split), standardization then logistic regression.
  Attacks: random flips, margin flips (the victim's most confident rows
  flipped), and a backdoor in columns 0 and 1. Detectors run on the
  standardized features.

For label flips, cleanlab's ``find_label_issues`` (default filter,
prune-by-noise-rate) runs on exactly the out-of-fold probabilities that
mlwarden's label-noise detector uses (5 folds, standardization then
logistic regression), so the two differ only in how they turn
probabilities into flags. cleanlab is installed by the ``bench`` extra.

The script prints Markdown tables and, with ``--json``, writes the figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

import numpy as np
import torch

from mlwarden.attacks.poisoning import BadNetsBackdoor, MarginLabelFlip, RandomLabelFlip, TabularBackdoor
from mlwarden.attacks.poisoning.backdoor import backdoor_success_rate
from mlwarden.data import Dataset, load_dataset
from mlwarden.defenses.poisoning import LabelNoiseDetector, build_detector, detection_metrics, extract_features
from mlwarden.defenses.poisoning.label_noise import out_of_fold_probabilities
from mlwarden.models import LeNet5, TrainingConfig, evaluate_accuracy, train_model

RATES = (0.0, 0.05, 0.1)
IMAGE_DETECTORS = {
    "label-flip": ("label-noise", "knn", "isolation-forest"),
    "backdoor": ("spectral-signature", "activation-clustering", "label-noise"),
}
TABULAR_DETECTORS = ("label-noise", "knn", "isolation-forest", "spectral-signature", "activation-clustering")


def _cleanlab_flags(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    from cleanlab.filter import find_label_issues

    return np.asarray(find_label_issues(labels, probabilities), dtype=bool)


def _row(attack: str, rate: float, poisoned: int, defense: str, metrics: dict[str, Any] | None, effects: dict[str, Any], seconds: float) -> dict[str, Any]:
    metrics = metrics or {}
    return {
        "attack": attack,
        "rate": rate,
        "poisoned": poisoned,
        "defense": defense,
        "flagged": metrics.get("flagged"),
        "precision": metrics.get("precision"),
        "recall": metrics.get("recall"),
        "auc": metrics.get("auc"),
        "detect_seconds": seconds,
        **effects,
    }


# --- images -------------------------------------------------------------------------------------


def _train_lenet(images: torch.Tensor, labels: torch.Tensor, test: Dataset, epochs: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = LeNet5()
    subset = Dataset(images, labels, test.class_names, "fashion-mnist", "train")
    train_model(model, subset, test, TrainingConfig(epochs=epochs, batch_size=64, seed=0), progress=False)
    return model.eval()


def run_images(train_count: int, epochs: int, test_count: int) -> list[dict[str, Any]]:
    train = load_dataset("fashion-mnist", "train").subset(train_count)
    test = load_dataset("fashion-mnist", "test").subset(test_count)
    rows: list[dict[str, Any]] = []
    for attack_name in ("label-flip", "backdoor"):
        for rate in RATES:
            if attack_name == "label-flip":
                attack: Any = RandomLabelFlip(rate=rate, seed=0)
            else:
                attack = BadNetsBackdoor(rate=rate, target_class=0, seed=0)
            poisoned = attack.poison(train.images, train.labels)
            labels = torch.as_tensor(poisoned.labels)

            def effects(model: torch.nn.Module) -> dict[str, Any]:
                result: dict[str, Any] = {"accuracy": evaluate_accuracy(model, test.images, test.labels)}
                if isinstance(attack, BadNetsBackdoor):
                    result["backdoor_success"] = backdoor_success_rate(model, attack, test.images, test.labels)
                return result

            started = time.perf_counter()
            victim = _train_lenet(poisoned.inputs, labels, test, epochs)
            rows.append(_row(attack_name, rate, len(poisoned.indices), "none", None, effects(victim), 0.0))
            print(f"{attack_name} {rate:g}: trained in {time.perf_counter() - started:.0f} s, {rows[-1]}", flush=True)
            features = extract_features(victim, poisoned.inputs)
            candidates: list[tuple[str, np.ndarray, float, np.ndarray | None]] = []
            for name in IMAGE_DETECTORS[attack_name]:
                detect_start = time.perf_counter()
                detector = build_detector(name)
                flags = detector.fit_predict(features, labels.numpy())
                candidates.append((name, flags, time.perf_counter() - detect_start, detector.training_scores_))
                if isinstance(detector, LabelNoiseDetector) and attack_name == "label-flip":
                    assert detector.probabilities_ is not None
                    detect_start = time.perf_counter()
                    flags = _cleanlab_flags(labels.numpy(), detector.probabilities_)
                    candidates.append(("cleanlab (same probabilities)", flags, time.perf_counter() - detect_start, None))
            for name, flags, seconds, scores in candidates:
                metrics = detection_metrics(flags, poisoned.indices, len(labels), scores)
                kept = torch.from_numpy(np.flatnonzero(~flags))
                retrained = _train_lenet(poisoned.inputs[kept], labels[kept], test, epochs)
                rows.append(_row(attack_name, rate, len(poisoned.indices), name, metrics, effects(retrained), seconds))
                print(f"  {name}: {rows[-1]}", flush=True)
    return rows


# --- tabular ------------------------------------------------------------------------------------


def run_tabular() -> list[dict[str, Any]]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, labels = load_breast_cancer(return_X_y=True)
    train_x, test_x, train_y, test_y = train_test_split(features, labels, test_size=0.3, random_state=0, stratify=labels)
    scaler = StandardScaler().fit(train_x)

    def victim(x: np.ndarray, y: np.ndarray) -> Any:
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y)

    rows: list[dict[str, Any]] = []
    for attack_name in ("label-flip", "margin-flip", "tabular-backdoor"):
        for rate in RATES:
            if attack_name == "label-flip":
                attack: Any = RandomLabelFlip(rate=rate, seed=0)
            elif attack_name == "margin-flip":
                attack = MarginLabelFlip(rate=rate, seed=0)
            else:
                attack = TabularBackdoor(rate=rate, target_class=1, columns=[0, 1], seed=0)
            poisoned = attack.poison(train_x, train_y)
            poisoned_x, poisoned_y = np.asarray(poisoned.inputs), np.asarray(poisoned.labels)

            def effects(model: Any) -> dict[str, Any]:
                result: dict[str, Any] = {"accuracy": float((model.predict(test_x) == test_y).mean())}
                if isinstance(attack, TabularBackdoor):
                    triggered = attack.apply_trigger(test_x[test_y != attack.target_class])
                    result["backdoor_success"] = float((model.predict(triggered) == attack.target_class).mean())
                return result

            rows.append(_row(attack_name, rate, len(poisoned.indices), "none", None, effects(victim(poisoned_x, poisoned_y)), 0.0))
            scaled = scaler.transform(poisoned_x)
            candidates: list[tuple[str, np.ndarray, float, np.ndarray | None]] = []
            for name in TABULAR_DETECTORS:
                detect_start = time.perf_counter()
                detector = build_detector(name)
                flags = detector.fit_predict(scaled, poisoned_y)
                candidates.append((name, flags, time.perf_counter() - detect_start, detector.training_scores_))
                if isinstance(detector, LabelNoiseDetector):
                    assert detector.probabilities_ is not None
                    detect_start = time.perf_counter()
                    flags = _cleanlab_flags(poisoned_y, detector.probabilities_)
                    candidates.append(("cleanlab (same probabilities)", flags, time.perf_counter() - detect_start, None))
            for name, flags, seconds, scores in candidates:
                metrics = detection_metrics(flags, poisoned.indices, len(poisoned_y), scores)
                kept = np.flatnonzero(~flags)
                rows.append(_row(attack_name, rate, len(poisoned.indices), name, metrics, effects(victim(poisoned_x[kept], poisoned_y[kept])), seconds))
            print(f"tabular {attack_name} {rate:g} done", flush=True)
    return rows


# --- output -------------------------------------------------------------------------------------


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| attack | poison | defense | flagged | precision | recall | accuracy | backdoor success |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['attack']} | {row['rate']:.0%} ({row['poisoned']}) | {row['defense']} | "
            f"{'-' if row['flagged'] is None else row['flagged']} | {_percent(row['precision'])} | {_percent(row['recall'])} | "
            f"{_percent(row['accuracy'])} | {_percent(row.get('backdoor_success'))} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("images", "tabular", "all"), default="all")
    parser.add_argument("--train", type=int, default=10000, help="Fashion-MNIST training images (default 10000)")
    parser.add_argument("--epochs", type=int, default=6, help="LeNet training epochs (default 6)")
    parser.add_argument("--test", type=int, default=5000, help="Fashion-MNIST test images (default 5000)")
    parser.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = parser.parse_args()
    output: dict[str, Any] = {
        "settings": vars(args),
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version()},
    }
    started = time.perf_counter()
    if args.part in ("tabular", "all"):
        output["tabular"] = run_tabular()
        print("\n### breast cancer, logistic regression\n\n" + markdown(output["tabular"]), flush=True)
    if args.part in ("images", "all"):
        output["images"] = run_images(args.train, args.epochs, args.test)
        print("\n### Fashion-MNIST, LeNet-5\n\n" + markdown(output["images"]), flush=True)
    output["seconds"] = time.perf_counter() - started
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(output, stream, indent=1)


if __name__ == "__main__":
    main()

"""Defenses against evasion on Fashion-MNIST LeNet-5: standard against adaptive PGD, and certified accuracy.

Usage::

    .venv/bin/python bench/defenses.py [--samples 1000] [--eps 0.1] [--steps 20] [--eot 10]
        [--certify 500] [--weights-dir runs/bench-weights] [--json FILE]

Rows:

- no defense, and LeNets trained by ``mlwarden train --defense NAME`` (PGD
  adversarial training is shipped; fast FGSM training and TRADES are trained
  into ``--weights-dir`` when missing). For these the white-box PGD attack
  already differentiates the whole model, so the standard and adaptive columns coincide;
- each ``--defense`` of ``mlwarden assess`` around the shipped LeNet, run through
  :func:`mlwarden.assess.defended.run_defense`: the standard column attacks the
  defended model as it is, the adaptive one is the per-sample worst case of that
  and PGD with BPDA, EOT over ``--eot`` draws, or the detector-aware loss.

Certified accuracy comes from randomized smoothing around the shipped LeNet
and around LeNets trained with Gaussian noise of the same sigma (trained into
``--weights-dir`` when missing), on the first ``--certify`` test images with
n0 = 100 and n = 1000 noise draws at alpha = 0.001.

The script prints Markdown tables and, with ``--json``, writes the figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mlwarden.assess.context import AssessmentContext
from mlwarden.assess.defended import run_defense
from mlwarden.assess.plan import AttackSpec, DefenseSpec, parse_spec
from mlwarden.attacks.evasion.pgd import ProjectedGradientDescent
from mlwarden.data import load_dataset
from mlwarden.defenses.evasion import RandomizedSmoothing, certified_accuracy
from mlwarden.models import load_from_weights, load_pretrained
from mlwarden.models.zoo import WEIGHTS_DIR

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_PGD = WEIGHTS_DIR / "lenet5-fashion-mnist-pgd.safetensors"

# Weights the script trains when they are missing: file stem -> arguments of 'mlwarden train'.
TRAINED = {
    "lenet5-fgsm": ["--defense", "fgsm:eps=0.1", "--epochs", "10"],
    "lenet5-trades": ["--defense", "trades:eps=0.1,steps=5", "--epochs", "5"],
    "lenet5-gaussian-0.25": ["--defense", "gaussian:sigma=0.25", "--epochs", "15"],
    "lenet5-gaussian-0.5": ["--defense", "gaussian:sigma=0.5", "--epochs", "15"],
    "lenet5-seed1": ["--seed", "1", "--epochs", "10"],
    "lenet5-seed2": ["--seed", "2", "--epochs", "10"],
}

DEFENSES = [
    "bit-depth:bits=4",
    "median:size=2",
    "jpeg:quality=75",
    "random-resize",
    "random-transform",
    "ensemble:members=[{seed1},{seed2}],vote=average",
    "ensemble:members=[{seed1},{seed2}],vote=majority",
    "smoothing:sigma=0.25,samples=20",
    "squeeze-detector",
    "mahalanobis",
]


def weights(directory: Path, stem: str) -> Path:
    """Return the weights file ``stem``, training it with ``mlwarden train`` first when it is missing."""
    path = directory / f"{stem}.safetensors"
    if not path.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "mlwarden.cli.main", "train", *TRAINED[stem], "--output", str(path)]
        print(f"training {stem}: {' '.join(command[2:])}", file=sys.stderr, flush=True)
        subprocess.run(command, check=True, cwd=ROOT)
    return path


def pgd_accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, steps: int) -> float:
    """Return the accuracy under L-inf PGD with one random start, in batches of 500."""
    attack = ProjectedGradientDescent(steps=steps, seed=0)
    correct = 0
    for start in range(0, len(labels), 500):
        stop = min(start + 500, len(labels))
        result = attack(model, images[start:stop], labels[start:stop], eps=eps, indices=torch.arange(start, stop))
        correct += int(result.robust_correct.sum())
    return correct / len(labels)


@torch.no_grad()
def clean_accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((model(images).argmax(1) == labels).float().mean())


def robust_models(args: argparse.Namespace, test: Any) -> list[dict[str, Any]]:
    images, labels = test.images, test.labels
    rows = []
    candidates = [("none", None), ("PGD adversarial training (shipped)", SHIPPED_PGD)]
    candidates += [("fast FGSM training", weights(args.weights_dir, "lenet5-fgsm"))]
    candidates += [("TRADES", weights(args.weights_dir, "lenet5-trades"))]
    for name, path in candidates:
        model = load_pretrained("lenet5")[0] if path is None else load_from_weights(path)[0]
        started = time.perf_counter()
        accuracy = pgd_accuracy(model, images, labels, args.eps, args.steps)
        rows.append(
            {
                "defense": name,
                "clean": clean_accuracy(model, images, labels),
                "standard": accuracy,
                "adaptive": accuracy,
                "adaptive_method": "same attack (white-box PGD already sees the whole model)",
                "seconds": time.perf_counter() - started,
            }
        )
        print(f"{name}: clean {rows[-1]['clean']:.4f}, PGD {accuracy:.4f}", file=sys.stderr, flush=True)
    return rows


def defense_rows(args: argparse.Namespace, test: Any, train: Any) -> list[dict[str, Any]]:
    model = load_pretrained("lenet5")[0]
    context = AssessmentContext(test=test, load_train=lambda: train, seed=0, batch_size=500, bounds=(0.0, 1.0))
    attack = AttackSpec("pgd", {"eps": args.eps, "steps": args.steps})
    members = {"seed1": weights(args.weights_dir, "lenet5-seed1"), "seed2": weights(args.weights_dir, "lenet5-seed2")}
    rows = []
    for text in DEFENSES:
        name, settings = parse_spec(text.format(**members), "defense")
        if name in ("random-resize", "random-transform", "smoothing", "ensemble"):
            settings.setdefault("eot_samples", args.eot)
        if name == "smoothing":
            settings.setdefault("certify_limit", 1)  # certified accuracy is measured separately below
        started = time.perf_counter()
        record = run_defense(DefenseSpec(name, settings), model, test, context, (attack,), progress=False)
        (outcome,) = record["attacks"]
        row = {
            "defense": text.replace("[{seed1},{seed2}]", "[seed 1, seed 2]"),
            "clean": record.get("clean_accuracy_with_rejection", record["clean_accuracy"]),
            "standard": outcome["standard"]["accuracy"],
            "adaptive": outcome["adaptive"]["accuracy"],
            "adaptive_method": record["adaptive_method"],
            "seconds": time.perf_counter() - started,
        }
        if record["kind"] == "detector":
            row.update(
                {
                    "fpr_measured": record["fpr_measured"],
                    "tpr_standard": outcome["standard"]["tpr"],
                    "tpr_adaptive": outcome["adaptive"]["tpr"],
                    "auc_standard": outcome["standard"]["roc_auc"],
                    "auc_adaptive": outcome["adaptive"]["roc_auc"],
                }
            )
        rows.append(row)
        print(f"{text}: {row}", file=sys.stderr, flush=True)
    return rows


def certified_rows(args: argparse.Namespace, test: Any) -> list[dict[str, Any]]:
    images, labels = test.images[: args.certify], test.labels[: args.certify]
    bases = [("shipped LeNet", 0.25, None), ("shipped LeNet", 0.5, None)]
    bases += [("LeNet trained with noise 0.25", 0.25, "lenet5-gaussian-0.25"), ("LeNet trained with noise 0.5", 0.5, "lenet5-gaussian-0.5")]
    rows = []
    for name, sigma, stem in bases:
        model = load_pretrained("lenet5")[0] if stem is None else load_from_weights(weights(args.weights_dir, stem))[0]
        started = time.perf_counter()
        predictions, radii = RandomizedSmoothing(model, sigma=sigma, seed=0).certify(images, n0=100, n=1000, alpha=0.001)
        accuracy = certified_accuracy(predictions, radii, labels, [0.0, 0.25, 0.5, 1.0])
        rows.append(
            {
                "base": name,
                "sigma": sigma,
                "accuracy": accuracy[0.0],
                "r0.25": accuracy[0.25],
                "r0.5": accuracy[0.5],
                "r1.0": accuracy[1.0],
                "abstained": float((predictions < 0).float().mean()),
                "seconds": time.perf_counter() - started,
            }
        )
        print(f"certified {name} sigma {sigma}: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def print_tables(robust: list[dict[str, Any]], defended: list[dict[str, Any]], certified: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print("| defense | clean | PGD standard | PGD adaptive | adaptive attack |")
    print("|---|---|---|---|---|")
    for row in robust + defended:
        print(f"| {row['defense']} | {percent(row['clean'])} | {percent(row['standard'])} | {percent(row['adaptive'])} | {row['adaptive_method']} |")
    print()
    print("| detector | measured FPR | TPR standard | TPR adaptive | AUC standard | AUC adaptive |")
    print("|---|---|---|---|---|---|")
    for row in defended:
        if "tpr_standard" in row:
            print(
                f"| {row['defense']} | {percent(row['fpr_measured'])} | {percent(row['tpr_standard'])} | "
                f"{percent(row['tpr_adaptive'])} | {row['auc_standard']:.3f} | {row['auc_adaptive']:.3f} |"
            )
    print()
    print("| base model | sigma | accuracy | r = 0.25 | r = 0.5 | r = 1.0 | abstained |")
    print("|---|---|---|---|---|---|---|")
    for row in certified:
        print(
            f"| {row['base']} | {row['sigma']} | {percent(row['accuracy'])} | {percent(row['r0.25'])} | "
            f"{percent(row['r0.5'])} | {percent(row['r1.0'])} | {percent(row['abstained'])} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000, help="test images for the accuracy table (default 1000)")
    parser.add_argument("--eps", type=float, default=0.1, help="L-inf budget of PGD (default 0.1)")
    parser.add_argument("--steps", type=int, default=20, help="PGD steps (default 20)")
    parser.add_argument("--eot", type=int, default=10, help="draws per gradient for EOT (default 10)")
    parser.add_argument("--certify", type=int, default=500, help="test images for certified accuracy (default 500)")
    parser.add_argument("--weights-dir", type=Path, default=ROOT / "runs" / "bench-weights", help="where trained weights are kept (default runs/bench-weights)")
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    args = parser.parse_args()

    test = load_dataset("fashion-mnist", "test").subset(args.samples)
    train = load_dataset("fashion-mnist", "train")
    started = time.time()
    robust = robust_models(args, test)
    defended = defense_rows(args, test, train)
    certified = certified_rows(args, load_dataset("fashion-mnist", "test"))
    print_tables(robust, defended, certified, args)
    if args.json:
        figures = {
            "settings": {key: str(value) for key, value in vars(args).items()},
            "threads": torch.get_num_threads(),
            "seconds": time.time() - started,
            "robust_training": robust,
            "defenses": defended,
            "certified": certified,
        }
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()

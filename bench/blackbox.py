"""Black-box attacks of mlwarden on an ONNX model, against ART's Square, SimBA and HopSkipJump.

Usage::

    .venv/bin/python bench/blackbox.py [--limit 1000] [--art-limit 1000] [--simba-art-limit 300]
        [--hsja-art-limit 200] [--threads N] [--no-write]

mlwarden's side is an ``assess`` run: the shipped LeNet-5 is exported to ONNX
in a temporary folder and :func:`mlwarden.assess.run_assessment` attacks the
first ``--limit`` Fashion-MNIST test images through ONNX Runtime, with the
budgets of ``BUDGETS`` below (the same plan as ``mlwarden assess --model
lenet.onnx --attack square:... --attack simba:... --attack hsja:...``).

ART 1.20.1's implementations run on the same images with the same budgets
(its SimBA and HopSkipJump, which take about half a second per image here,
on the first ``--simba-art-limit`` and ``--hsja-art-limit`` of them),
through a ``PyTorchClassifier`` around the same LeNet. ART reports no query
counts, so the script counts the rows of every ``predict`` call of ART's
classifier and attributes them to samples:

- SimBA and HopSkipJump are run one image at a time (ART's SimBA only takes
  batches of one, and ART's HopSkipJump loops over images internally), so
  each image's count is the rows predicted during its call;
- Square is run on the whole set at once. ART 1.20.1 repeats three calls per
  step: a prediction of every image, then the loss of the images not yet
  fooled, before and after the change. Each image is charged its rows of the
  three calls while it is not yet fooled; ART's re-predictions of images
  already fooled are not charged to them.

Success is recomputed for both libraries from the returned images with the
PyTorch LeNet, over the test images it classifies correctly. For
HopSkipJump, which ART runs for a fixed number of iterations without an
``eps``, a success is an adversarial image within L2 distance ``eps``;
mlwarden's HopSkipJump stops a sample once it gets there. Medians of
queries are over successful samples.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import logging
import os
import platform
import re
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlwarden import __version__
from mlwarden.assess import AttackSpec, Plan, run_assessment
from mlwarden.data import load_dataset
from mlwarden.models import export_onnx, load_pretrained

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Black-box attacks"
BATCH_SIZE = 500

# Budgets both libraries get; eps in pixel units of [0, 1] (L-inf for Square, L2 for HopSkipJump).
BUDGETS: dict[str, dict[str, Any]] = {
    "square": {"norm": "linf", "eps": 0.1, "max_queries": 1000, "p_init": 0.3},
    "simba": {"basis": "dct", "step_size": 0.2, "max_queries": 1000},
    "hsja": {"norm": "l2", "eps": 1.5, "max_queries": 1000},
}

# ART's HopSkipJump has no query budget; these iteration counts spend about 1,000 queries per image.
ART_HSJA = {"max_iter": 5, "max_eval": 1000, "init_eval": 100, "init_size": 100}

# ART's SimBA counts iterations of one or two queries each: half the query budget keeps it within it.
ART_SIMBA_ITERATIONS = BUDGETS["simba"]["max_queries"] // 2


# How the implementations differ, for reading the table; these hold whatever the figures of a run.
READING_NOTES = [
    "Reading the table:",
    "",
    "- ART's Square (1.20.1) draws one window position per step for the whole batch and predicts the current "
    "images again at every step, so a step costs it 3 queries per image; mlwarden draws a window per image and "
    "keeps each image's current margin, so a step costs 1 query.",
    "- ART's HopSkipJump has no `eps` and no query budget: it runs its iterations to the end, so its successful "
    "images end closer to the boundary (lower median norm), but every image spends about the same number of "
    "queries. mlwarden's stops an image once it is within `eps`, which is why its median queries sit below the budget.",
    "- Seconds include each library's own overhead (ART runs SimBA and HopSkipJump one image at a time). "
    "Queries, success rates and norms do not depend on the machine; seconds do.",
]


@dataclass
class Row:
    attack: str
    library: str
    images: int
    success_rate: float
    median_queries: float | None
    median_norm: float | None
    seconds: float
    note: str = ""


# --- mlwarden -------------------------------------------------------------------------------


def run_mlwarden(onnx_path: Path, limit: int) -> tuple[list[Row], dict[str, Any]]:
    """Run the black-box plan through ``run_assessment`` on the ONNX model."""
    specs = tuple(
        AttackSpec(name, {key: value for key, value in budget.items()}) for name, budget in BUDGETS.items()
    )
    plan = Plan(model=str(onnx_path), limit=limit, batch_size=BATCH_SIZE, attacks=specs)
    results = run_assessment(plan, progress=False)
    rows = []
    for record in results["attacks"]:
        norm = "linf" if record["norm"] == "linf" else "l2"
        rows.append(
            Row(
                attack=record["name"],
                library="mlwarden",
                images=record["samples"],
                success_rate=record["success_rate"],
                median_queries=record["queries_per_sample"]["median_successful"],
                median_norm=record[norm]["median"],
                seconds=record["seconds"],
            )
        )
    return rows, results


def subset_row(record: dict[str, Any], count: int) -> Row:
    """Return mlwarden's figures on the first ``count`` images, from the per-sample part of its record."""
    samples = record["per_sample"]
    norm = "linf" if record["norm"] == "linf" else "l2"
    attacked = [not flag for flag in samples["already_adversarial"][:count]]
    fooled = [bool(s) and a for s, a in zip(samples["success"][:count], attacked)]
    queries = [q for q, f in zip(samples["queries"][:count], fooled) if f]
    norms = [n for n, f in zip(samples[norm][:count], fooled) if f]
    return Row(
        attack=record["name"],
        library="mlwarden",
        images=count,
        success_rate=sum(fooled) / max(sum(attacked), 1),
        median_queries=float(np.median(queries)) if queries else None,
        median_norm=float(np.median(norms)) if norms else None,
        seconds=record["seconds"] * count / record["samples"],
        note="the same images as ART; seconds prorated from the run on all images",
    )


# --- ART ----------------------------------------------------------------------------------


class _PredictLog:
    """Wraps an ART classifier's ``predict`` and keeps, per call, the rows and the predicted labels."""

    def __init__(self, classifier: Any) -> None:
        self.classifier = classifier
        self.original = classifier.predict
        self.calls: list[np.ndarray] = []
        classifier.predict = self._predict

    def _predict(self, x: np.ndarray, *args: Any, **kwargs: Any) -> np.ndarray:
        output = self.original(x, *args, **kwargs)
        self.calls.append(np.argmax(output, axis=1))
        return output

    def rows(self) -> int:
        return sum(len(call) for call in self.calls)

    def clear(self) -> None:
        self.calls = []


class _Float32(nn.Module):
    """Casts inputs to float32: ART's HopSkipJump sends float64 arrays during its binary search."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs.to(torch.float32))


def _art_classifier(model: nn.Module) -> Any:
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=_Float32(model), loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10, clip_values=(0.0, 1.0)
    )


def _one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(10, dtype=np.float32)[labels]


def art_square(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Run ART's Square on all images at once; return adversarials, queries per image until fooled, seconds."""
    from art.attacks.evasion import SquareAttack

    budget = BUDGETS["square"]
    classifier = _art_classifier(model)
    log = _PredictLog(classifier)
    attack = SquareAttack(
        classifier,
        norm=np.inf,
        eps=budget["eps"],
        max_iter=budget["max_queries"] // 3,
        p_init=budget["p_init"],
        nb_restarts=1,
        batch_size=BATCH_SIZE,
        verbose=False,
    )
    start = time.perf_counter()
    adversarial = attack.generate(images, _one_hot(labels))
    seconds = time.perf_counter() - start
    return adversarial, _square_queries(log.calls, labels), seconds


def _square_queries(calls: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """Charge each image the rows of ART's (predict all, loss, loss) calls made while it was not yet fooled."""
    queries = np.zeros(len(labels), dtype=np.int64)
    robust = np.ones(len(labels), dtype=bool)
    index = 0
    while index < len(calls):
        full = calls[index]
        if len(full) != len(labels):
            raise RuntimeError(f"unexpected ART Square call of {len(full)} rows; the attribution assumes ART 1.20.1")
        robust = full == labels
        queries[robust] += 1
        # ART stops after a prediction that finds every image fooled, before any loss call.
        losses = calls[index + 1 : index + 3] if robust.any() else []
        for loss in losses:
            if len(loss) != int(robust.sum()):
                raise RuntimeError("ART Square loss call does not match the images not yet fooled")
            queries[robust] += 1
        index += 1 + len(losses)
    return queries


def art_one_by_one(
    name: str, model: nn.Module, images: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """Run ART's SimBA or HopSkipJump image by image; return adversarials, queries per image, seconds."""
    from art.attacks.evasion import HopSkipJump, SimBA

    # ART's SimBA reads probabilities from the classifier, so it gets the LeNet with a softmax on top.
    classifier = _art_classifier(nn.Sequential(model, nn.Softmax(dim=1)) if name == "simba" else model)
    log = _PredictLog(classifier)
    if name == "simba":
        budget = BUDGETS["simba"]
        attack = SimBA(
            classifier, attack="dct", order="diag", epsilon=budget["step_size"], max_iter=ART_SIMBA_ITERATIONS, verbose=False
        )
    else:
        attack = HopSkipJump(classifier, norm=2, batch_size=256, verbose=False, **ART_HSJA)
    adversarial = np.empty_like(images)
    queries = np.zeros(len(images), dtype=np.int64)
    start = time.perf_counter()
    for index in range(len(images)):
        log.clear()
        adversarial[index : index + 1] = attack.generate(images[index : index + 1], _one_hot(labels[index : index + 1]))
        queries[index] = log.rows()
    return adversarial, queries, time.perf_counter() - start


def art_row(
    name: str,
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    adversarial: np.ndarray,
    queries: np.ndarray,
    seconds: float,
    note: str,
) -> Row:
    """Score ART's output with the PyTorch model, as mlwarden's runner scores its own."""
    adversarial_tensor = torch.from_numpy(adversarial).clamp(0, 1)
    with torch.no_grad():
        clean = model(images).argmax(1)
        predicted = model(adversarial_tensor).argmax(1)
    attacked = clean == labels
    delta = (adversarial_tensor - images).flatten(1)
    norm = BUDGETS[name].get("norm", "l2")
    distance = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    success = (predicted != labels) & attacked
    if name == "hsja":
        success &= distance <= BUDGETS[name]["eps"] * (1 + 1e-6)
    successful_queries = torch.from_numpy(queries)[success]
    return Row(
        attack=name,
        library="ART",
        images=len(images),
        success_rate=float(success.sum()) / max(int(attacked.sum()), 1),
        median_queries=float(successful_queries.double().median()) if successful_queries.numel() else None,
        median_norm=float(distance[success].median()) if bool(success.any()) else None,
        seconds=seconds,
        note=note,
    )


# --- report -------------------------------------------------------------------------------


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_section(rows: list[Row], args: argparse.Namespace, threads: int, load: tuple[float, float]) -> str:
    art_version = importlib.metadata.version("adversarial-robustness-toolbox")
    lines = [
        SECTION,
        "",
        f"Command: `.venv/bin/python bench/blackbox.py --limit {args.limit} --art-limit {args.art_limit} "
        f"--simba-art-limit {args.simba_art_limit} --hsja-art-limit {args.hsja_art_limit}{'' if args.threads is None else f' --threads {args.threads}'}` "
        f"(mlwarden {__version__}, ART {art_version}, torch {torch.__version__}, "
        f"onnxruntime {importlib.metadata.version('onnxruntime')}, {threads} thread(s), {_cpu_name()}, "
        f"load average {load[0]:.1f} before and {load[1]:.1f} after; {datetime.date.today().isoformat()}).",
        "",
        "mlwarden runs an `assess` plan on the shipped LeNet-5 exported to ONNX, through ONNX Runtime; ART runs "
        "its own implementations through a `PyTorchClassifier` around the same LeNet. Budgets: Square L-inf "
        f"eps {BUDGETS['square']['eps']}, p_init {BUDGETS['square']['p_init']}, {BUDGETS['square']['max_queries']} "
        f"queries per image (ART: {BUDGETS['square']['max_queries'] // 3} iterations of 3 queries); SimBA-DCT step "
        f"{BUDGETS['simba']['step_size']}, {BUDGETS['simba']['max_queries']} queries (ART: {ART_SIMBA_ITERATIONS} "
        "iterations of 1 or 2 queries, low frequencies first); HopSkipJump L2, success within L2 "
        f"{BUDGETS['hsja']['eps']}, {BUDGETS['hsja']['max_queries']} queries (ART, which has no query budget: "
        f"{ART_HSJA['max_iter']} iterations, {ART_HSJA['init_eval']} initial probes, at most "
        f"{ART_HSJA['max_eval']}).",
        "",
        "Success rate counts the images the model classified correctly; queries are the median over successful "
        "images, counted by the query model for mlwarden and from the rows of ART's `predict` calls for ART "
        "(see the script's docstring). Norm is the median L-inf (Square) or L2 distance of successful images.",
        "",
        "| attack | library | images | success rate | median queries | median norm | seconds | per image (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.attack} | {row.library} | {row.images} | {100 * row.success_rate:.1f}% | "
            f"{_number(row.median_queries)} | {_number(row.median_norm, 3)} | {row.seconds:.1f} | "
            f"{1000 * row.seconds / row.images:.1f} |"
        )
    notes = [row for row in rows if row.note]
    if notes:
        lines.append("")
        lines.extend(f"- {row.attack}, {row.library}: {row.note}" for row in notes)
    lines += ["", *READING_NOTES]
    return "\n".join(lines) + "\n"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_section(text: str, path: Path) -> None:
    """Replace this script's section in ``path``, or append it, leaving other sections alone."""
    existing = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(existing):
        updated = pattern.sub(lambda _: text + "\n", existing, count=1)
    else:
        updated = existing.rstrip("\n") + "\n\n" + text
    path.write_text(updated)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--limit", type=int, default=1000, help="test images for mlwarden (default 1000)")
    parser.add_argument("--art-limit", type=int, default=1000, help="test images for ART's Square (default 1000)")
    parser.add_argument(
        "--simba-art-limit", type=int, default=300, help="test images for ART's SimBA, which is slow (default 300)"
    )
    parser.add_argument(
        "--hsja-art-limit", type=int, default=200, help="test images for ART's HopSkipJump, the slowest (default 200)"
    )
    parser.add_argument("--threads", type=int, help="torch and ONNX Runtime threads (default: torch's default)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    # ART warns about its own deprecations; they are not what is measured.
    warnings.filterwarnings("ignore")
    logging.getLogger("art").setLevel(logging.ERROR)
    load_before = os.getloadavg()[0]

    model, _ = load_pretrained("lenet5")
    test = load_dataset("fashion-mnist", "test")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as folder:
        onnx_path = export_onnx(model, Path(folder) / "lenet5.onnx", (1, 28, 28))
        ours, results = run_mlwarden(onnx_path, args.limit)
    by_name = {row.attack: row for row in ours}
    records = {record["name"]: record for record in results["attacks"]}

    for name in BUDGETS:
        rows.append(by_name[name])
        count = {"square": args.art_limit, "simba": args.simba_art_limit, "hsja": args.hsja_art_limit}[name]
        images, labels = test.images[:count], test.labels[:count]
        if name == "square":
            adversarial, queries, seconds = art_square(model, images.numpy(), labels.numpy())
        else:
            adversarial, queries, seconds = art_one_by_one(name, model, images.numpy(), labels.numpy())
        note = "" if count == args.limit else f"first {count} of the {args.limit} images, to keep the run short"
        if count < args.limit:
            rows.append(subset_row(records[name], count))
        rows.append(art_row(name, model, images, labels, adversarial, queries, seconds, note))
        for row in rows[-3 if count < args.limit else -2 :]:
            print(
                f"{row.attack:7s} {row.library:9s} images {row.images:5d}  success {100 * row.success_rate:5.1f}%  "
                f"median queries {_number(row.median_queries):>6s}  median norm {_number(row.median_norm, 3):>6s}  "
                f"{row.seconds:7.1f} s",
                flush=True,
            )

    text = render_section(rows, args, torch.get_num_threads(), (load_before, os.getloadavg()[0]))
    print(text)
    if not args.no_write:
        write_section(text, ROOT / "docs" / "benchmarks.md")
        print(f"wrote {SECTION!r} to docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

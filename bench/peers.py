"""White-box attacks of mlwarden against ART, torchattacks and Foolbox 3, in one process.

Usage::

    .venv/bin/python bench/peers.py [--limit 1000] [--attacks fgsm,pgd,...]
        [--peers art,torchattacks,foolbox] [--slow-peer-limit 100] [--seeds 10] [--no-write]

Every library attacks the shipped LeNet-5 on the same first ``--limit``
Fashion-MNIST test images, in batches of 500, with the budgets of
``BUDGETS`` below. For each attack and library the script prints the time
and the ratio of the peer's time to mlwarden's (per image). It also prints
the accuracy under attack, the success rate over the samples the attack had
to work on and the mean L2 norm of the successful perturbations. It writes
the same figures to the section ``## White-box attacks against peers`` of
docs/benchmarks.md, with a summary that compares them with the targets of
the white-box suite.

PGD and APGD start from a random point, so every library runs them once per
seed (``--seeds``) and the rows give the means. mlwarden's APGD also runs from
the random points ART draws for the same seeds, which compares the two
implementations without the noise of the draw. An image over the budget (a
perturbation over eps, or more changed elements than JSMA's gamma allows)
counts as a failure, so every library is held to the same budget.

The peers come from scripts/peers.txt (installed with --no-deps) and the
``bench`` extra. A missing peer is skipped. The slowest peer runs need
seconds per image: ART's C&W (a line search of the learning rate at every
step), and torchattacks' DeepFool and JSMA (which loop over single images).
They attack only the first ``--slow-peer-limit`` images, so their time
ratio is per image, and their note gives mlwarden's figures on the same
images.

All numbers are measured here, with torch's default thread count. Results
are recomputed from each library's returned images with the same model, so
no library's own success flag is trusted: Foolbox 3.3.4's C&W returns an
all-zero image for a sample it failed on and reports it as a success when the
model misclassifies that image, which this script counts as a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import logging
import math
import os
import platform
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mlwarden import __version__
from mlwarden.attacks.evasion import apgd as apgd_module
from mlwarden.attacks.evasion import APGD, BIM, CW, FGSM, JSMA, PGD, DeepFool
from mlwarden.data import load_dataset
from mlwarden.models import load_pretrained

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## White-box attacks against peers"
BATCH_SIZE = 500
PEERS = ("art", "torchattacks", "foolbox")
PEER_PACKAGES = {
    "art": "adversarial-robustness-toolbox",
    "torchattacks": "torchattacks",
    "foolbox": "foolbox",
}

# The budgets every library gets. eps is L-inf in pixel units of [0, 1].
BUDGETS: dict[str, dict[str, float | int | str]] = {
    "fgsm": {"eps": 0.1},
    "bim": {"eps": 0.1, "step_size": 0.01, "steps": 10},
    "pgd": {"eps": 0.1, "step_size": 0.01, "steps": 40, "random_start": "yes"},
    "deepfool": {"steps": 50, "overshoot": 0.02, "candidates": 10},
    "jsma": {"theta": 1.0, "gamma": 0.1, "targets": "random, seed 0"},
    "cw": {"binary_search_steps": 5, "steps": 100, "learning_rate": 0.01, "initial_const": 0.01, "kappa": 0},
    "apgd-ce": {"eps": 0.03, "steps": 100, "restarts": 1},
    "apgd-dlr": {"eps": 0.03, "steps": 100, "restarts": 1},
}
ATTACKS = tuple(BUDGETS)
TARGETED = {"jsma"}
# Attacks that start from a random point: every library runs them once per seed (--seeds).
RANDOM_START = {"pgd", "apgd-ce", "apgd-dlr"}
# Attacks also run by mlwarden from ART's own random starts (see with_art_starts).
ART_STARTS_CHECK = {"apgd-ce", "apgd-dlr"}
# (peer, attack) runs that take seconds per image, so they attack only --slow-peer-limit images.
SLOW_RUNS = {("art", "cw"), ("torchattacks", "deepfool"), ("torchattacks", "jsma")}

Adversary = Callable[[nn.Module, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass
class Row:
    attack: str
    library: str
    images: int
    seconds: float
    accuracy: float
    success_rate: float
    mean_l2: float | None
    notes: list[str] = field(default_factory=list)
    ratio: float | None = None
    # mlwarden's accuracy on the same images, when a slow peer attacked only the first few.
    ours_on_same: float | None = None
    # mlwarden's APGD accuracy from ART's random starts (mean over the seeds).
    from_art_starts: float | None = None
    # The accuracy of each seed, for attacks with random starts.
    seed_accuracies: list[float] = field(default_factory=list)


# --- mlwarden ---------------------------------------------------------------------


def _mlwarden(attack: str, seed: int = 0) -> Adversary:
    budget = BUDGETS[attack]
    builders: dict[str, Callable[[], object]] = {
        "fgsm": lambda: FGSM(),
        "bim": lambda: BIM(steps=int(budget.get("steps", 0)), step_size=float(budget.get("step_size", 0))),
        "pgd": lambda: PGD(steps=int(budget.get("steps", 0)), step_size=float(budget.get("step_size", 0)), seed=seed),
        "deepfool": lambda: DeepFool(steps=50, overshoot=0.02, candidates=10),
        "jsma": lambda: JSMA(theta=1.0, gamma=0.1),
        "cw": lambda: CW(steps=100, binary_search_steps=5, initial_const=0.01, learning_rate=0.01),
        "apgd-ce": lambda: APGD(loss="ce", steps=100, seed=seed),
        "apgd-dlr": lambda: APGD(loss="dlr", steps=100, seed=seed),
    }
    instance = builders[attack]()
    eps = budget.get("eps")

    def run(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        outputs = []
        for start in range(0, len(inputs), BATCH_SIZE):
            stop = start + BATCH_SIZE
            batch_targets = None if targets is None else targets[start:stop]
            result = instance(  # type: ignore[operator]
                model,
                inputs[start:stop],
                labels[start:stop],
                batch_targets,
                eps=eps,
                indices=torch.arange(start, min(stop, len(inputs))),
            )
            outputs.append(result.adversarial)
        return torch.cat(outputs)

    return run


# --- ART -------------------------------------------------------------------------------


def _art(attack: str, model: nn.Module, seed: int = 0) -> Adversary | None:
    from art.attacks import evasion  # type: ignore[import-untyped]
    from art.estimators.classification import PyTorchClassifier  # type: ignore[import-untyped]

    classifier = PyTorchClassifier(
        model=model, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10, clip_values=(0.0, 1.0)
    )
    common = {"batch_size": BATCH_SIZE, "verbose": False}
    factories: dict[str, Callable[[], object]] = {
        "fgsm": lambda: evasion.FastGradientMethod(classifier, eps=0.1, batch_size=BATCH_SIZE),
        "bim": lambda: evasion.BasicIterativeMethod(classifier, eps=0.1, eps_step=0.01, max_iter=10, **common),
        "pgd": lambda: evasion.ProjectedGradientDescent(
            classifier, eps=0.1, eps_step=0.01, max_iter=40, num_random_init=1, **common
        ),
        "deepfool": lambda: evasion.DeepFool(classifier, max_iter=50, epsilon=0.02, nb_grads=10, **common),
        "jsma": lambda: evasion.SaliencyMapMethod(classifier, theta=1.0, gamma=0.1, **common),
        "cw": lambda: evasion.CarliniL2Method(
            classifier, confidence=0.0, learning_rate=0.01, binary_search_steps=5, max_iter=100, initial_const=0.01, **common
        ),
        "apgd-ce": lambda: evasion.AutoProjectedGradientDescent(
            classifier, eps=0.03, eps_step=0.06, max_iter=100, nb_random_init=1, loss_type="cross_entropy", **common
        ),
        "apgd-dlr": lambda: evasion.AutoProjectedGradientDescent(
            classifier,
            eps=0.03,
            eps_step=0.06,
            max_iter=100,
            nb_random_init=1,
            loss_type="difference_logits_ratio",
            **common,
        ),
    }
    instance = factories[attack]()

    def run(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        np.random.seed(seed)
        torch.manual_seed(seed)
        # ART's JSMA is targeted only and reads y as the targets; the others read y as true labels.
        y = targets if targets is not None else labels
        return torch.as_tensor(instance.generate(x=inputs.numpy(), y=y.numpy()))  # type: ignore[attr-defined]

    return run


def _starts_from(table: torch.Tensor) -> contextlib.AbstractContextManager[None]:
    """Make mlwarden's APGD take its random starts from ``table`` (one unit-cube point per global index)."""

    @contextlib.contextmanager
    def patched() -> Iterator[None]:
        original = apgd_module.random_start_noise
        apgd_module.random_start_noise = lambda keys, shape, norm, seed: table[keys].view(len(keys), *shape)
        try:
            yield
        finally:
            apgd_module.random_start_noise = original

    return patched()


def with_art_starts(
    attack: str, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, seeds: list[int]
) -> tuple[str, float]:
    """Run mlwarden's APGD from the random starts that ART draws for the same seeds.

    Returns a note with the accuracy of each seed, and the mean accuracy.

    After ``np.random.seed(seed)`` (as :func:`_art` calls it), ART 1.20.1's APGD
    draws, for its one restart, a uniform point of the eps-cube per correctly
    classified image, in order. Starting mlwarden there leaves the
    implementations as the only difference between the two runs.
    """
    eps = float(BUDGETS[attack]["eps"])
    correct = _predict(model, inputs) == labels
    size = inputs[0].numel()
    accuracies = []
    for seed in seeds:
        draws = np.random.RandomState(seed).uniform(-eps, eps, (int(correct.sum()), size)).astype(np.float32)
        table = torch.zeros(len(inputs), size)
        table[correct] = torch.from_numpy(draws) / eps
        with _starts_from(table):
            adversarial = _mlwarden(attack, seed)(model, inputs, labels, None)
        accuracies.append(float((_predict(model, adversarial) == labels).float().mean()))
    per_seed = ", ".join(f"{100 * a:.1f}" for a in accuracies)
    note = f"from ART's random starts of the same seeds: accuracy per seed {per_seed}%"
    return note, sum(accuracies) / len(accuracies)


# --- torchattacks -----------------------------------------------------------------------


def _torchattacks(attack: str, model: nn.Module, seed: int = 0) -> Adversary | None:
    import torchattacks  # type: ignore[import-untyped]

    factories: dict[str, Callable[[], object]] = {
        "fgsm": lambda: torchattacks.FGSM(model, eps=0.1),
        "bim": lambda: torchattacks.BIM(model, eps=0.1, alpha=0.01, steps=10),
        "pgd": lambda: torchattacks.PGD(model, eps=0.1, alpha=0.01, steps=40, random_start=True),
        "deepfool": lambda: torchattacks.DeepFool(model, steps=50, overshoot=0.02),
        "jsma": lambda: torchattacks.JSMA(model, theta=1.0, gamma=0.1),
        # No binary search: one run at c=1 with the 5 x 100 gradient steps of the others.
        "cw": lambda: torchattacks.CW(model, c=1.0, kappa=0.0, steps=500, lr=0.01),
        "apgd-ce": lambda: torchattacks.APGD(model, norm="Linf", eps=0.03, steps=100, n_restarts=1, seed=seed, loss="ce"),
        "apgd-dlr": lambda: torchattacks.APGD(model, norm="Linf", eps=0.03, steps=100, n_restarts=1, seed=seed, loss="dlr"),
    }
    instance = factories[attack]()
    if attack in TARGETED:
        instance.set_mode_targeted_by_label(quiet=True)  # type: ignore[attr-defined]

    def run(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        torch.manual_seed(seed)
        goal = targets if targets is not None else labels
        outputs = [
            instance(inputs[start : start + BATCH_SIZE], goal[start : start + BATCH_SIZE]).detach()  # type: ignore[operator]
            for start in range(0, len(inputs), BATCH_SIZE)
        ]
        return torch.cat(outputs)

    return run


# --- Foolbox ---------------------------------------------------------------------------------


def _foolbox(attack: str, model: nn.Module, seed: int = 0) -> Adversary | None:
    import foolbox

    attacks = foolbox.attacks
    factories: dict[str, tuple[Callable[[], object], float | None]] = {
        "fgsm": (lambda: attacks.FGSM(), 0.1),
        "bim": (lambda: attacks.LinfBasicIterativeAttack(abs_stepsize=0.01, steps=10), 0.1),
        "pgd": (lambda: attacks.LinfPGD(abs_stepsize=0.01, steps=40, random_start=True), 0.1),
        "deepfool": (lambda: attacks.L2DeepFoolAttack(steps=50, candidates=10, overshoot=0.02), None),
        "cw": (
            lambda: attacks.L2CarliniWagnerAttack(
                binary_search_steps=5, steps=100, stepsize=0.01, confidence=0, initial_const=0.01
            ),
            None,
        ),
    }
    if attack not in factories:
        return None
    factory, eps = factories[attack]
    instance = factory()
    wrapped = foolbox.PyTorchModel(model, bounds=(0, 1))

    def run(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        torch.manual_seed(seed)
        outputs = []
        for start in range(0, len(inputs), BATCH_SIZE):
            _, clipped, _ = instance(  # type: ignore[operator]
                wrapped, inputs[start : start + BATCH_SIZE], labels[start : start + BATCH_SIZE], epsilons=eps
            )
            outputs.append(clipped.detach())
        return torch.cat(outputs)

    return run


PEER_ADAPTERS: dict[str, Callable[[str, nn.Module, int], Adversary | None]] = {
    "art": _art,
    "torchattacks": _torchattacks,
    "foolbox": _foolbox,
}
# Attacks each peer lacks: JSMA and APGD are not in Foolbox 3.
MISSING = {"foolbox": {"jsma", "apgd-ce", "apgd-dlr"}}


# --- measuring ------------------------------------------------------------------------------


@torch.no_grad()
def _predict(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(inputs[s : s + BATCH_SIZE]).argmax(1) for s in range(0, len(inputs), BATCH_SIZE)])


def measure(
    attack: str,
    library: str,
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor | None,
    adversarial: torch.Tensor,
    seconds: float,
) -> Row:
    """Return the figures of one run, recomputed from the returned images."""
    notes = []
    adversarial = adversarial.to(torch.float32).reshape(inputs.shape)
    placeholder = (adversarial.flatten(1).abs().amax(1) == 0) & (inputs.flatten(1).abs().amax(1) > 0)
    if bool(placeholder.any()):
        notes.append(f"{int(placeholder.sum())} all-zero images returned for failed samples, counted as failures")
        adversarial = torch.where(placeholder.view(-1, 1, 1, 1), inputs, adversarial)
    outside = int(((adversarial < -1e-6) | (adversarial > 1 + 1e-6)).flatten(1).any(1).sum())
    if outside:
        notes.append(f"{outside} images outside [0, 1]")
    # An image over the budget does not count as an attack at that budget: it is replaced by the
    # clean image, so accuracy and success are compared at the same budget for every library.
    delta = (adversarial - inputs).flatten(1)
    over_budget = torch.zeros(len(inputs), dtype=torch.bool)
    gamma = BUDGETS[attack].get("gamma")
    if gamma is not None:
        allowed = math.floor(float(gamma) * delta.shape[1])
        changed = delta.ne(0).sum(1)
        over_budget |= changed > allowed
        if bool(over_budget.any()):
            notes.append(
                f"{int(over_budget.sum())} images change more than gamma allows ({allowed} elements, up to "
                f"{int(changed.max())}), counted as failures"
            )
    eps = BUDGETS[attack].get("eps")
    if eps is not None:
        over_eps = delta.abs().amax(1) > float(eps) + 1e-5
        over_budget |= over_eps
        if bool(over_eps.any()):
            notes.append(f"{int(over_eps.sum())} perturbations over eps, counted as failures")
    if bool(over_budget.any()):
        adversarial = torch.where(over_budget.view(-1, 1, 1, 1), inputs, adversarial)
        delta = (adversarial - inputs).flatten(1)

    clean = _predict(model, inputs)
    predictions = _predict(model, adversarial)
    if targets is None:
        attacked, success = clean == labels, predictions != labels
    else:
        attacked, success = clean != targets, predictions == targets
    fooled = attacked & success
    l2 = delta.norm(dim=1)
    return Row(
        attack=attack,
        library=library,
        images=len(inputs),
        seconds=seconds,
        accuracy=float((predictions == labels).float().mean()),
        success_rate=float(fooled.sum()) / max(int(attacked.sum()), 1),
        mean_l2=float(l2[fooled].mean()) if bool(fooled.any()) else None,
        notes=notes,
    )


# Short runs are repeated and timed by their fastest repetition, because a single run of a tenth
# of a second varies by more than the differences between libraries. Each pair is (seconds,
# repetitions), and the first limit above the first run's time applies. On a shared 2-core machine
# the fastest of 5 runs of FGSM still moved by half between two benchmark runs, so the shortest get 20.
SHORT_RUNS = ((0.5, 20), (2.0, 5))


def repetitions(seconds: float) -> int:
    """Return how many runs time an attack whose first run took ``seconds`` (1 for long runs)."""
    return next((count for limit, count in SHORT_RUNS if seconds < limit), 1)


def timed(adversary: Adversary, model: nn.Module, inputs, labels, targets) -> tuple[torch.Tensor, float]:
    """Return the adversarial images and the run's seconds (the fastest of several runs for short ones)."""
    start = time.perf_counter()
    adversarial = adversary(model, inputs, labels, targets)
    seconds = time.perf_counter() - start
    for _ in range(repetitions(seconds) - 1):
        start = time.perf_counter()
        adversary(model, inputs, labels, targets)
        seconds = min(seconds, time.perf_counter() - start)
    return adversarial, seconds


def available_peers(requested: list[str]) -> dict[str, str]:
    """Return ``{peer: version}`` of the requested peers that import."""
    found = {}
    for peer in requested:
        try:
            __import__(peer)
        except ImportError as error:
            print(f"skipping {peer}: {error}", file=sys.stderr)
            continue
        found[peer] = importlib.metadata.version(PEER_PACKAGES[peer])
    return found


def mean_row(rows: list[Row], seeds: list[int]) -> Row:
    """Return one row with the mean figures of runs that differ only in their random seed."""
    if len(rows) == 1:
        return rows[0]
    l2_values = [r.mean_l2 for r in rows if r.mean_l2 is not None]
    per_seed = ", ".join(f"{100 * r.accuracy:.1f}" for r in rows)
    notes = [f"mean of seeds {seeds[0]}-{seeds[-1]}; accuracy per seed {per_seed}%"]
    notes += list(dict.fromkeys(note for r in rows for note in r.notes))
    return Row(
        attack=rows[0].attack,
        library=rows[0].library,
        images=rows[0].images,
        seconds=rows[0].seconds,
        accuracy=sum(r.accuracy for r in rows) / len(rows),
        success_rate=sum(r.success_rate for r in rows) / len(rows),
        mean_l2=sum(l2_values) / len(l2_values) if l2_values else None,
        notes=notes,
        seed_accuracies=[r.accuracy for r in rows],
    )


def run_seeds(
    attack: str,
    library: str,
    make: Callable[[int], Adversary | None],
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor | None,
    seeds: list[int],
) -> tuple[Row, torch.Tensor] | None:
    """Run one library's attack once per seed; time the first seed and average the figures.

    Returns the mean row and the first seed's images, or None when the library lacks the attack.
    """
    rows, first = [], None
    for seed in seeds:
        adversary = make(seed)
        if adversary is None:
            return None
        if first is None:
            adversarial, seconds = timed(adversary, model, inputs, labels, targets)
            first = adversarial
        else:
            adversarial, seconds = adversary(model, inputs, labels, targets), 0.0
        rows.append(measure(attack, library, model, inputs, labels, targets, adversarial, seconds))
    assert first is not None
    return mean_row(rows, seeds), first


def benchmark(
    limit: int, attacks: list[str], peers: dict[str, str], slow_peer_limit: int, seed_count: int = 10
) -> tuple[list[Row], float]:
    model, _ = load_pretrained("lenet5")
    data = load_dataset("fashion-mnist", "test").subset(limit)
    inputs, labels = data.images, data.labels
    generator = torch.Generator().manual_seed(0)
    targets = (labels + torch.randint(1, 10, labels.shape, generator=generator)) % 10
    clean_accuracy = float((_predict(model, inputs) == labels).float().mean())

    # One forward and backward pass first, so that no library pays for the first call's set-up.
    warm = inputs[:BATCH_SIZE].clone().requires_grad_(True)
    torch.autograd.grad(model(warm).sum(), warm)

    print(
        "attack, library, images, seconds, peer time per image over mlwarden's (above 1x: mlwarden faster), "
        "accuracy under attack, success rate, mean L2 of the successes, notes",
        flush=True,
    )
    rows: list[Row] = []
    for attack in attacks:
        attack_targets = targets if attack in TARGETED else None
        seeds = list(range(seed_count)) if attack in RANDOM_START else [0]
        outcome = run_seeds(
            attack, "mlwarden", lambda seed: _mlwarden(attack, seed), model, inputs, labels, attack_targets, seeds
        )
        assert outcome is not None
        ours, adversarial = outcome
        if attack in ART_STARTS_CHECK and "art" in peers:
            note, ours.from_art_starts = with_art_starts(attack, model, inputs, labels, seeds)
            ours.notes.append(note)
        rows.append(ours)
        _print_row(ours)
        seconds = ours.seconds
        for peer in peers:
            if attack in MISSING.get(peer, set()):
                print(f"{attack:9s} {peer:13s} has no such attack; skipped", flush=True)
                continue
            count = min(limit, slow_peer_limit) if (peer, attack) in SLOW_RUNS else limit
            sub_targets = None if attack_targets is None else attack_targets[:count]
            outcome = run_seeds(
                attack,
                peer,
                lambda seed, peer=peer: PEER_ADAPTERS[peer](attack, model, seed),
                model,
                inputs[:count],
                labels[:count],
                sub_targets,
                seeds,
            )
            if outcome is None:
                continue
            row, _ = outcome
            row.ratio = (row.seconds / count) / (seconds / limit)
            if count < limit:
                same = measure(
                    attack, "mlwarden", model, inputs[:count], labels[:count], sub_targets, adversarial[:count], 0.0
                )
                row.ours_on_same = same.accuracy
                row.notes.append(
                    f"first {count} images only; mlwarden on them: accuracy {100 * same.accuracy:.1f}%, "
                    f"success {100 * same.success_rate:.1f}%, mean L2 {_l2_text(same.mean_l2)}"
                )
            rows.append(row)
            _print_row(row)
    return rows, clean_accuracy


def _seconds_text(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _l2_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _print_row(row: Row) -> None:
    ratio = "" if row.ratio is None else f"{row.ratio:7.1f}x"
    print(
        f"{row.attack:9s} {row.library:13s} {row.images:5d} img {_seconds_text(row.seconds):>8s} s {ratio:>9s} "
        f"acc {100 * row.accuracy:5.1f}% success {100 * row.success_rate:5.1f}% L2 {_l2_text(row.mean_l2):>6s} "
        f"{'; '.join(row.notes)}",
        flush=True,
    )


# --- the Markdown section ---------------------------------------------------------------------


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _images(accuracy: float, images: int) -> str:
    count = accuracy * images
    return f"{count:.0f}" if abs(count - round(count)) < 1e-3 else f"{count:.1f}"


def _verdict(ours: float, theirs: float, images: int, than: str = "") -> str:
    """Say how mlwarden's accuracy compares; with ``than``, end in a phrase such as "the same as ART's"."""
    gap = (ours - theirs) * images
    if abs(gap) < 0.05:
        return f"the same as {than}'s" if than else "the same"
    text = f"{'higher' if gap > 0 else 'lower'} by {abs(gap):.1f} images"
    return f"{text} than {than}'s" if than else text


def compare_with_targets(rows: list[Row]) -> list[str]:
    """Return Markdown lines that compare the table with the targets of the white-box suite.

    The targets: at least as fast as the fastest peer on every attack, at least 5 times faster
    than ART on DeepFool, JSMA and C&W, and accuracy under attack no higher than the best peer's.
    """
    ours = {r.attack: r for r in rows if r.library == "mlwarden"}
    peers = [r for r in rows if r.library != "mlwarden" and r.ratio is not None]
    if not peers:
        return []
    lines = ["How this run compares with the targets of the white-box suite (written by the script from the table):", ""]
    behind = [r for r in peers if (r.ratio or 0.0) < 1.0]
    ahead = [r for r in peers if (r.ratio or 0.0) >= 1.0]
    text = "- Speed: "
    if behind:
        text += "mlwarden is slower than " + ", ".join(f"{r.library} on {r.attack} ({r.ratio:.2f})" for r in behind)
        text += "; it is faster than every other peer run, " if ahead else "."
    elif ahead:
        text += "mlwarden is faster than every peer on every attack, "
    if ahead:
        slowest = min(ahead, key=lambda r: r.ratio or 0.0)
        fastest = max(ahead, key=lambda r: r.ratio or 0.0)
        text += (
            f"from {slowest.ratio:.1f} times ({slowest.library}, {slowest.attack}) to {fastest.ratio:.1f} times "
            f"({fastest.library}, {fastest.attack})."
        )
    lines.append(text)
    art = {r.attack: r for r in peers if r.library == "art" and r.attack in {"deepfool", "jsma", "cw"}}
    if art:
        lines.append(
            "- Against ART, whose target is 5 times: "
            + ", ".join(f"{r.ratio:.1f} times faster on {r.attack}" for r in art.values())
            + "."
        )
    lines.append("- Images still classified correctly after the attack (fewer is stronger), mlwarden against the best peer:")
    for attack, mine in ours.items():
        rivals = [r for r in peers if r.attack == attack]
        if not rivals:
            continue

        def own_accuracy(rival: Row, mine: Row = mine) -> float:
            return mine.accuracy if rival.ours_on_same is None else rival.ours_on_same

        best = min(rivals, key=lambda r: r.accuracy - own_accuracy(r))
        images = best.images
        text = (
            f"  - {attack}: {_images(own_accuracy(best), images)} of {images} against {_images(best.accuracy, images)} "
            f"for {best.library}: {_verdict(own_accuracy(best), best.accuracy, images)}"
        )
        text += "."
        spreads = [max(r.seed_accuracies) - min(r.seed_accuracies) for r in [mine, *rivals] if r.seed_accuracies]
        if spreads:
            text += f" Means over the seeds, whose results differ by up to {max(spreads) * images:.0f} images per library."
        art_row = next((r for r in rivals if r.library == "art"), None)
        if mine.from_art_starts is not None and art_row is not None:
            text += (
                f" Started from ART's random points, mlwarden leaves {_images(mine.from_art_starts, images)}, "
                f"{_verdict(mine.from_art_starts, art_row.accuracy, images, 'ART')} {_images(art_row.accuracy, images)}."
            )
        lines.append(text)
    return lines + [""]


def render_section(
    rows: list[Row], clean_accuracy: float, limit: int, peers: dict[str, str], command: str, load: tuple[float, float]
) -> str:
    versions = ", ".join(
        [f"mlwarden {__version__}", f"torch {torch.__version__}"]
        + [f"{PEER_PACKAGES[p]} {v}" for p, v in peers.items()]
        + ([f"eagerpy {importlib.metadata.version('eagerpy')}"] if "foolbox" in peers else [])
    )
    lines = [
        SECTION,
        "",
        f"Command: `{command}`, run on {datetime.date.today().isoformat()} on {os.cpu_count()} CPU cores "
        f"({_cpu_name()}), torch with its default {torch.get_num_threads()} threads, one process for all "
        f"libraries. Load average {load[0]:.1f} before and {load[1]:.1f} after the run. Versions: {versions}.",
        "",
        f"Model: the shipped LeNet-5; data: the first {limit} Fashion-MNIST test images, on which its clean "
        f"accuracy is {100 * clean_accuracy:.1f}%. Every library gets the same images in batches of {BATCH_SIZE} "
        "and the same budget:",
        "",
    ]
    for attack in sorted({r.attack for r in rows}, key=list(BUDGETS).index):
        settings = ", ".join(f"{k} {v}" for k, v in BUDGETS[attack].items())
        lines.append(f"- {attack}: {settings}")
    lines += [
        "",
        "Accuracy under attack counts every image. Success rate counts the images the attack had to work on "
        "(correctly classified, or for targeted JSMA not yet the target) and mean L2 the successful ones. All "
        "are recomputed from the images each library returns; an image over the budget (more changed elements "
        "than gamma allows, or a perturbation over eps) counts as a failure. The time ratio is the peer's time "
        "per image over mlwarden's, so above 1 means mlwarden is faster.",
        "",
        "PGD and APGD start from a random point, and which of a few hard images they fool changes with the "
        "draw. Every library runs them once per seed, and their rows give the mean over the seeds (the "
        "accuracy of each seed is in the notes) and the time of the first seed. The APGD rows of mlwarden also "
        "give its accuracy when it starts from the points ART draws for the same seeds, which leaves the "
        "implementations as the only difference.",
        "",
        "| attack | library | images | seconds | peer / mlwarden time | accuracy under attack | success rate | mean L2 | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = "-" if row.ratio is None else f"{row.ratio:.1f}"
        name = f"**{row.library}**" if row.library == "mlwarden" else row.library
        lines.append(
            f"| {row.attack} | {name} | {row.images} | {_seconds_text(row.seconds)} | {ratio} | {100 * row.accuracy:.1f}% | "
            f"{100 * row.success_rate:.1f}% | {_l2_text(row.mean_l2)} | {'; '.join(row.notes)} |"
        )
    lines += [
        "",
        "Notes on the peers' versions of the attacks:",
        "",
        "- Foolbox 3 has no JSMA and no APGD, so those attacks have no Foolbox row.",
        "- torchattacks' C&W has no binary search over the constant; it runs once at c = 1 with 500 steps, the "
        "gradient budget of 5 searches of 100 steps.",
        "- torchattacks' JSMA runs targeted with the same targets as the others (`set_mode_targeted_by_label`). "
        "ART's JSMA is targeted only. Both ART and mlwarden's default (`saliency=target`) change the two "
        "elements of largest target-logit gradient at each step; torchattacks scores pairs with the paper's "
        "product on logits, which mlwarden offers as `saliency=pair`. With `saliency=pair` on the same 1,000 "
        "images, mlwarden measured 24.1% accuracy under attack and 59.3% success in 4.7 s, against 21.0% and "
        "67.0% for torchattacks on its 100 images (mlwarden 20.0% and 66.0% on those).",
        "- ART's C&W searches its learning rate at every step, and torchattacks' DeepFool and JSMA handle one "
        "image at a time. These three attacked fewer images (see the images column), and their time ratio is "
        "per image.",
        "- mlwarden's BIM, PGD and APGD stop working on a sample at its first adversarial iterate, which saves "
        "gradients and gives smaller perturbations; the peers run every step.",
        "- mlwarden runs forward passes the peers skip: one on the clean inputs, to leave misclassified ones "
        "alone, and one that checks every result. FGSM takes the clean prediction from its gradient pass, so "
        "it runs one forward and backward pass and one forward pass, against one forward and backward pass "
        "for the peers. While attacks run, mlwarden computes the input gradient of a convolution with one or "
        "two input channels (LeNet-5's first layer) as a convolution with the flipped kernel, which oneDNN "
        "runs several times faster than torch's own gradient.",
        "- Short runs are timed by their fastest repetition, for every library alike: "
        + ", ".join(f"runs under {limit:g} s by the fastest of {count}" for limit, count in SHORT_RUNS)
        + ".",
        "",
    ]
    lines += compare_with_targets(rows)
    return "\n".join(lines)


def write_section(text: str, path: Path) -> None:
    """Replace the section in ``path`` (or append it), leaving the other sections as they are."""
    existing = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(existing):
        updated = pattern.sub(lambda _: text + "\n", existing, count=1)
    else:
        updated = existing.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(updated)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--limit", type=int, default=1000, help="test images to attack (default 1000)")
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated attacks (default: all)")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated peers (default: all)")
    parser.add_argument(
        "--slow-peer-limit",
        type=int,
        default=100,
        help="images for the slowest peer runs: ART's C&W, torchattacks' DeepFool and JSMA (default 100)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=10,
        help="seeds 0 to N-1 for the attacks with random starts (PGD, APGD), for every library (default 10)",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print the rows and the summary only; leave docs/benchmarks.md alone"
    )
    args = parser.parse_args(argv)
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    unknown = [a for a in attacks if a not in BUDGETS]
    if unknown:
        parser.error(f"unknown attack {unknown[0]!r}; choose from {', '.join(ATTACKS)}")

    # Peers warn about their own deprecations; they are not what is measured.
    warnings.filterwarnings("ignore")
    logging.getLogger("art").setLevel(logging.ERROR)
    peers = available_peers([p.strip() for p in args.peers.split(",") if p.strip()])
    load_before = os.getloadavg()[0]
    rows, clean_accuracy = benchmark(args.limit, attacks, peers, args.slow_peer_limit, args.seeds)
    load_after = os.getloadavg()[0]
    print("\n".join(["", *compare_with_targets(rows)]))
    if not args.no_write:
        command = "python bench/peers.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
        section = render_section(rows, clean_accuracy, args.limit, peers, command, (load_before, load_after))
        write_section(section, ROOT / "docs" / "benchmarks.md")
        print(f"wrote {SECTION!r} to docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

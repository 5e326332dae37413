"""The peer benchmark's accounting: budgets enforced alike for every library, and an honest summary."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

BENCH = Path(__file__).resolve().parents[2] / "bench" / "peers.py"


@pytest.fixture(scope="module")
def peers() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_peers", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_peers"] = module
    spec.loader.exec_module(module)
    return module


def _sign_model() -> nn.Module:
    """Two classes on 1x2x2 images: class 1 when the first element exceeds 0.5."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[-1.0, 0, 0, 0], [1.0, 0, 0, 0]]))
        model[1].bias.copy_(torch.tensor([0.5, -0.5]))
    return model.eval()


def test_perturbation_over_eps_counts_as_failure(peers: ModuleType) -> None:
    model = _sign_model()
    inputs = torch.full((2, 1, 2, 2), 0.45)
    labels = torch.zeros(2, dtype=torch.long)
    adversarial = inputs.clone()
    adversarial[0, 0, 0, 0] = 0.54  # within the PGD budget of 0.1, and misclassified
    adversarial[1, 0, 0, 0] = 0.9  # misclassified, but 0.45 over the budget
    row = peers.measure("pgd", "peer", model, inputs, labels, None, adversarial, 1.0)
    assert row.accuracy == pytest.approx(0.5)
    assert row.success_rate == pytest.approx(0.5)
    assert row.mean_l2 == pytest.approx(0.09, abs=1e-5)
    assert any("over eps, counted as failures" in note for note in row.notes)


def test_summary_slower_and_weaker_runs(peers: ModuleType) -> None:
    row = peers.Row
    rows = [
        row("pgd", "mlwarden", 1000, 2.0, 0.012, 0.98, 1.0, seed_accuracies=[0.011, 0.013]),
        row("pgd", "art", 1000, 1.0, 0.010, 0.99, 1.0, ratio=0.5, seed_accuracies=[0.010, 0.010]),
        row("cw", "mlwarden", 1000, 10.0, 0.0, 1.0, 0.7),
        row("cw", "art", 100, 30.0, 0.3, 0.6, 0.5, ratio=30.0, ours_on_same=0.0),
    ]
    text = "\n".join(peers.compare_with_targets(rows))
    assert "slower than art on pgd (0.50)" in text
    assert "30.0 times faster on cw" in text
    assert "pgd: 12 of 1000 against 10 for art: higher by 2.0 images" in text
    assert "differ by up to 2 images per library" in text
    # ART's C&W ran on 100 images: the comparison uses mlwarden's figures on those 100.
    assert "cw: 0 of 100 against 30 for art: lower by 30.0 images" in text


def test_summary_same_start_comparison(peers: ModuleType) -> None:
    row = peers.Row
    ours = row("apgd-ce", "mlwarden", 1000, 3.0, 0.35, 0.6, 0.7, from_art_starts=0.347)
    art = row("apgd-ce", "art", 1000, 12.0, 0.347, 0.61, 0.7, ratio=4.0)
    text = "\n".join(peers.compare_with_targets([ours, art]))
    assert "Started from ART's random points, mlwarden leaves 347, the same as ART's 347." in text

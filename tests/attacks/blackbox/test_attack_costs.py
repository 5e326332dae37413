"""Default budgets that follow the norm, and queries spent to fit an attack, as ``assess`` reports them."""

from __future__ import annotations

import pytest

from mlwarden.assess import read_results
from mlwarden.assess.plan import AttackSpec, Plan
from mlwarden.assess.runner import run_assessment
from mlwarden.attacks.evasion import HopSkipJump, TransferAttack
from mlwarden.attacks.evasion._blackbox_entries import (
    BLACKBOX_ATTACKS,
    L2_EPS,
    LINF_EPS,
    TRANSFER_L2_EPS,
    UNIVERSAL_L2_EPS,
)
from mlwarden.attacks.registry import get_attack_entry
from mlwarden.cli.main import main
from mlwarden.errors import ParameterError
from mlwarden.models import ModuleQueryModel
from mlwarden.report.markdown import render_markdown

# Settings of each black-box name that choose an L2 attack.
L2_SETTINGS = {
    "square": {"norm": "l2"},
    "universal": {"norm": "l2"},
    "hsja": {"norm": "l2"},
    "transfer": {"attack": "pgd-l2"},
}

# The default L2 budget of each name that has one.
L2_DEFAULTS = {"square": L2_EPS, "universal": UNIVERSAL_L2_EPS, "transfer": TRANSFER_L2_EPS}


# --- default budgets --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(L2_SETTINGS))
def test_l2_default_budget_follows_norm(name):
    attack, call = get_attack_entry(name).build(L2_SETTINGS[name])
    assert attack.norm == "l2"
    assert call.get("eps") == L2_DEFAULTS.get(name)


@pytest.mark.parametrize("name", BLACKBOX_ATTACKS)
def test_no_linf_default_for_l2_attacks(name):
    entry = get_attack_entry(name)
    for settings in ({}, L2_SETTINGS.get(name, {})):
        attack, call = entry.build(settings)
        if attack.norm == "l2" and call.get("eps") is not None:
            # An L-inf sized budget leaves an L2 attack almost no room on 28x28 images.
            assert call["eps"] >= 1.0, (name, settings)


def test_given_budget_wins_over_norm_default():
    _, call = get_attack_entry("square").build({"norm": "l2", "eps": 0.5})
    assert call["eps"] == 0.5
    _, call = get_attack_entry("square").build({})
    assert call["eps"] == LINF_EPS


def test_l0_surrogate_attack_gets_no_budget():
    attack, call = get_attack_entry("transfer").build({"attack": "jsma"})
    assert attack.norm == "l0"
    assert "eps" not in call


def test_list_attacks_shows_l2_defaults(capsys):
    assert main(["assess", "--list-attacks"]) == 0
    listing = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert f"eps {L2_EPS}" in listing["square"]
    assert f"eps {UNIVERSAL_L2_EPS}" in listing["universal"]
    assert f"eps {TRANSFER_L2_EPS}" in listing["transfer"]


def test_assess_square_l2_uses_l2_budget():
    plan = Plan(limit=10, attacks=(AttackSpec("square", {"norm": "l2", "max_queries": 50}),))
    (record,) = run_assessment(plan, progress=False)["attacks"]
    assert record["norm"] == "l2"
    assert record["eps"] == L2_EPS
    assert record["l2"]["mean"] is None or record["l2"]["mean"] <= L2_EPS + 1e-4


# --- fitting queries --------------------------------------------------------------------------


def test_cli_reports_transfer_fitting_queries(tmp_path):
    output = tmp_path / "out"
    arguments = ["assess", "--limit", "10", "--attack", "transfer:train_samples=200,epochs=1", "--output", str(output)]
    assert main(arguments) == 0
    (record,) = read_results(output)["attacks"]
    assert record["settings"]["labels"] == "queries"
    assert record["fitting_queries"] == 200
    # The time column includes the surrogate's training.
    assert record["fitting_seconds"] > 0
    assert record["seconds"] >= record["fitting_seconds"]
    # The per-sample count stays 0: the surrogate, not the target, is attacked.
    assert record["queries_per_sample"]["median"] == 0
    report = (output / "report.md").read_text()
    assert "| fitting queries |" in report
    assert "| 200 |" in report


def test_transfer_true_labels_fit_without_queries():
    plan = Plan(limit=10, attacks=(AttackSpec("transfer", {"labels": "true", "train_samples": 200, "epochs": 1}),))
    results = run_assessment(plan, progress=False)
    assert results["attacks"][0]["fitting_queries"] == 0
    assert "| - |" in render_markdown(results).split("## Threat profiles")[1]


def test_targeted_hsja_counts_starting_point_queries():
    plan = Plan(limit=10, attacks=(AttackSpec("hsja", {"target": "next", "max_queries": 30}),))
    (record,) = run_assessment(plan, progress=False)["attacks"]
    # One label query per pooled training image, spent once to choose the starting points.
    assert record["fitting_queries"] == 1000
    assert "fitting_queries" not in record["settings"]


def test_hsja_fit_starting_points_counts_queries(lenet, fashion_test):
    attack = HopSkipJump()
    attack.fit_starting_points(lenet, fashion_test.images[:50])
    assert attack.fitting_queries == 50


def test_use_surrogate_keeps_given_fitting_queries(lenet):
    attack = TransferAttack()
    attack.use_surrogate(lenet, fitting_queries=5000)
    assert attack.fitting_queries == 5000
    with pytest.raises(ParameterError, match="fitting_queries"):
        attack.use_surrogate(lenet, fitting_queries=-1)


def test_transfer_fit_counts_target_queries(lenet, fashion_train):
    target = ModuleQueryModel(lenet)
    attack = TransferAttack(train_samples=300, epochs=1)
    attack.fit(target, fashion_train)
    assert attack.fitting_queries == 300
    assert target.queries == 300

"""Poisoning in an assessment plan: per attack and rate, the effects and each detector's precision and recall."""

from __future__ import annotations

import pytest

from mlwarden.assess import AttackSpec, DefenseSpec, Plan, run_assessment
from mlwarden.assess.poisoning import split_attack_specs, split_defense_specs
from mlwarden.errors import PlanError
from mlwarden.report.markdown import render_markdown

TINY = {"train_limit": 600, "epochs": 1}


@pytest.fixture(scope="module")
def results() -> dict:  # type: ignore[type-arg]
    plan = Plan(
        limit=100,
        attacks=(
            AttackSpec("backdoor", {"rate": [0.0, 0.1], "target_class": 2, **TINY}),
            AttackSpec("label-flip", {"rate": 0.1, **TINY}),
        ),
        defenses=(DefenseSpec("label-noise"),),
    )
    return run_assessment(plan, progress=False)


def test_plan_split_keeps_kinds_apart() -> None:
    specs = (AttackSpec("fgsm"), AttackSpec("backdoor"), AttackSpec("label-flip"))
    evasion, poisoning = split_attack_specs(specs)
    assert [spec.name for spec in evasion] == ["fgsm"]
    assert [spec.name for spec in poisoning] == ["backdoor", "label-flip"]
    defenses, detectors = split_defense_specs((DefenseSpec("jpeg"), DefenseSpec("spectral-signature")))
    assert [spec.name for spec in defenses] == ["jpeg"]
    assert [spec.name for spec in detectors] == ["spectral-signature"]


def test_poisoning_records_per_rate(results) -> None:  # type: ignore[no-untyped-def]
    assert results["attacks"] == []
    records = results["poisoning"]
    assert [(record["name"], record["rate"]) for record in records] == [("backdoor", 0.0), ("backdoor", 0.1), ("label-flip", 0.1)]
    assert [record["poisoned"] for record in records] == [0, 60, 60]
    assert records[1]["label"] == "backdoor:target_class=2 (rate=0.1)"
    for record in records:
        assert 0.0 <= record["clean_accuracy"] <= 1.0
        assert record["train_samples"] == 600
        assert [defense["name"] for defense in record["defenses"]] == ["label-noise"]


def test_backdoor_success_only_for_backdoors(results) -> None:  # type: ignore[no-untyped-def]
    backdoor, _, flip = results["poisoning"]
    assert 0.0 <= backdoor["backdoor_success_rate"] <= 1.0
    assert backdoor["defenses"][0]["backdoor_success_rate"] is not None
    assert flip["backdoor_success_rate"] is None


def test_detection_metrics_recorded(results) -> None:  # type: ignore[no-untyped-def]
    clean, _, flip = results["poisoning"]
    defense = flip["defenses"][0]
    assert defense["recall"] >= 0.5
    assert defense["removed"] >= defense["true_positives"]
    assert defense["poison_left"] == 60 - defense["true_positives"]
    assert clean["defenses"][0]["recall"] is None


def test_report_has_poisoning_section(results) -> None:  # type: ignore[no-untyped-def]
    report = render_markdown(results)
    assert "## Poisoning" in report
    assert "| label-flip | 0.1 | 60 | label-noise |" in report


def test_default_detectors_by_kind() -> None:
    plan = Plan(limit=50, attacks=(AttackSpec("backdoor", {"rate": 0.05, **TINY}),))
    records = run_assessment(plan, progress=False)["poisoning"]
    assert [defense["name"] for defense in records[0]["defenses"]] == ["spectral-signature", "activation-clustering"]


def test_unknown_poisoning_setting_rejected() -> None:
    plan = Plan(limit=20, attacks=(AttackSpec("backdoor", {"eps": 0.1}),))
    with pytest.raises(PlanError, match="has no setting 'eps'"):
        run_assessment(plan, progress=False)

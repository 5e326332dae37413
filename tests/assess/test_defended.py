"""Defenses in assessments: plan and command line, results records, shards and the report's matrix."""

from __future__ import annotations

import json

import pytest

from mlwarden.assess import Plan, load_plan, run_assessment
from mlwarden.assess.context import AssessmentContext
from mlwarden.assess.defended import prepare_defense, run_defended_attack, summarize_defended_attack
from mlwarden.assess.plan import AttackSpec, DefenseSpec
from mlwarden.cli.main import main
from mlwarden.data import load_dataset
from mlwarden.errors import PlanError
from mlwarden.report.defenses import defense_matrix, render_defenses_markdown
from mlwarden.report.markdown import render_markdown


@pytest.fixture(scope="module")
def defended_results():
    plan = Plan(
        limit=40,
        batch_size=20,
        attacks=(AttackSpec("fgsm", {"eps": 0.1}),),
        defenses=(
            DefenseSpec("bit-depth", {"bits": 4}),
            DefenseSpec("squeeze-detector", {"fit_samples": 1000, "attack_steps": 20}),
            DefenseSpec("smoothing", {"samples": 8, "predict_n": 32, "eot_samples": 2, "n0": 8, "n": 64, "certify_limit": 10}),
        ),
    )
    return run_assessment(plan, progress=False)


def test_assessment_records_every_defense(defended_results):
    labels = [record["label"] for record in defended_results["defenses"]]
    assert labels == ["bit-depth:bits=4", "squeeze-detector:fit_samples=1000,attack_steps=20", defended_results["defenses"][2]["label"]]
    for record in defended_results["defenses"]:
        (outcome,) = record["attacks"]
        assert outcome["label"] == defended_results["attacks"][0]["label"]
        assert outcome["adaptive"]["accuracy"] <= outcome["standard"]["accuracy"]
        assert record["adaptive_method"]
        assert record["known_bypass"]


def test_assessment_results_are_json(defended_results, tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(defended_results))
    assert json.loads(path.read_text())["defenses"][1]["kind"] == "detector"


def test_detector_record_has_detection_figures(defended_results):
    record = defended_results["defenses"][1]
    (outcome,) = record["attacks"]
    assert record["fpr_target"] == 0.05
    assert 0.0 <= record["fpr_measured"] <= 1.0
    assert outcome["standard"]["tpr"] is not None
    assert 0.0 <= outcome["standard"]["roc_auc"] <= 1.0
    assert outcome["adaptive"]["norm"] == "linf"
    assert outcome["adaptive"]["budget"] == 0.1


def test_matrix_puts_standard_beside_adaptive(defended_results):
    headers, rows = defense_matrix(defended_results)
    assert headers == ["defense", "clean", "fgsm:eps=0.1 standard", "fgsm:eps=0.1 adaptive"]
    assert rows[0][0] == "none"
    assert rows[0][2] == rows[0][3]
    assert [row[0] for row in rows[1:]] == [record["label"] for record in defended_results["defenses"]]


def test_markdown_report_has_defense_sections(defended_results):
    report = render_markdown(defended_results)
    assert "## Defenses" in report
    assert "### Detection" in report
    assert "### Certified accuracy" in report
    assert "| bit-depth:bits=4 |" in report


def test_report_without_defenses_has_no_section():
    assert render_defenses_markdown({"attacks": [], "clean": {"accuracy": 1.0}}) == ""


def test_shards_match_a_whole_run(lenet, fashion_test):
    data = fashion_test.subset(40)
    context = AssessmentContext(test=data, load_train=lambda: load_dataset("fashion-mnist", "train"), seed=3, batch_size=20, bounds=(0.0, 1.0))
    attack = AttackSpec("bim", {"eps": 0.05, "steps": 5})
    for spec in (DefenseSpec("jpeg", {}), DefenseSpec("mahalanobis", {"fit_samples": 1000, "attack_steps": 10})):
        prepared = prepare_defense(spec, lenet, context)
        (whole,) = run_defended_attack(prepared, attack, lenet, data, context)
        (first,) = run_defended_attack(prepared, attack, lenet, data, context, shard=(0, 20))
        (second,) = run_defended_attack(prepared, attack, lenet, data, context, shard=(20, 40))
        for name, values in whole["per_sample"].items():
            assert first["per_sample"][name] + second["per_sample"][name] == values, f"{spec.name}: {name}"


def test_summary_recomputes_from_per_sample_arrays():
    per_sample = {"standard_correct": [1, 1, 0, 1], "adaptive_correct": [1, 0, 0, 0], "adaptive_attack_only_correct": [1, 0, 0, 1]}
    figures = summarize_defended_attack(per_sample)
    assert figures["standard"]["accuracy"] == 0.75
    assert figures["adaptive"]["accuracy"] == 0.25
    assert figures["adaptive_attack_only"]["accuracy"] == 0.5


def test_plan_file_lists_defenses(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("attacks: [fgsm]\ndefenses:\n  - jpeg:quality=50\n  - name: smoothing\n    sigma: 0.5\n")
    plan = load_plan(path)
    assert plan.defenses == (DefenseSpec("jpeg", {"quality": 50}), DefenseSpec("smoothing", {"sigma": 0.5}))


def test_unknown_defense_setting_is_rejected(lenet, fashion_test):
    context = AssessmentContext(test=fashion_test.subset(4), load_train=lambda: fashion_test, seed=0)
    with pytest.raises(PlanError, match="defense 'jpeg' has no setting 'bits'; its settings are quality, approximation"):
        prepare_defense(DefenseSpec("jpeg", {"bits": 3}), lenet, context)


def test_cli_rejects_unknown_defense(capsys):
    assert main(["assess", "--defense", "blur", "--limit", "2"]) == 2
    assert "unknown defense 'blur'" in capsys.readouterr().err


def test_cli_prints_defense_matrix(tmp_path, capsys):
    output = tmp_path / "out"
    arguments = ["assess", "--limit", "20", "--attack", "fgsm", "--defense", "bit-depth", "--output", str(output)]
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    assert "fgsm adaptive" in printed
    assert "## Defenses" in (output / "report.md").read_text()
    assert json.loads((output / "results.json").read_text())["defenses"][0]["name"] == "bit-depth"

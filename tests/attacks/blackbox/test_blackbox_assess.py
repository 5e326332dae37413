"""The black-box attacks in ``assess``: registered names, defaults, ONNX targets, plans and the command line."""

from __future__ import annotations

import pytest

from mlwarden.assess import read_results
from mlwarden.assess.plan import AttackSpec, Plan, load_plan
from mlwarden.assess.runner import run_assessment
from mlwarden.attacks.registry import get_attack_entry
from mlwarden.cli.main import main

QUERY_ATTACKS = ("square", "simba", "hsja", "onepixel")
NAMES = (*QUERY_ATTACKS, "transfer", "universal", "patch")

# Knowledge tag each name must carry into the report.
KNOWLEDGE = {
    "square": "black-box score-based",
    "simba": "black-box score-based",
    "hsja": "black-box decision-based",
    "onepixel": "black-box score-based",
    "transfer": "gray-box",
    "universal": "white-box",
    "patch": "white-box",
}


@pytest.mark.parametrize("name", NAMES)
def test_names_registered(name):
    entry = get_attack_entry(name)
    attack, call = entry.build({})
    assert attack.name == name
    assert attack.profile.knowledge.value == KNOWLEDGE[name]


@pytest.fixture(scope="module")
def onnx_results(lenet_onnx):
    """The default black-box attacks, and transfer, on 40 test images against the ONNX LeNet."""
    plan = Plan(model=str(lenet_onnx), limit=40, attacks=tuple(AttackSpec(name) for name in (*QUERY_ATTACKS, "transfer")))
    return run_assessment(plan, progress=False)


@pytest.fixture(scope="module")
def fitted_results():
    """The universal perturbation and the patch, with their defaults, on 100 test images against LeNet."""
    plan = Plan(limit=100, attacks=(AttackSpec("universal"), AttackSpec("patch")))
    return run_assessment(plan, progress=False)


@pytest.mark.slow
def test_defaults_fool_onnx_model(onnx_results):
    assert onnx_results["model"]["source"].endswith("lenet.onnx")
    records = {record["name"]: record for record in onnx_results["attacks"]}
    assert set(records) == {*QUERY_ATTACKS, "transfer"}
    for name, record in records.items():
        assert record["success_rate"] > 0.6, name
        assert record["profile"]["knowledge"] == KNOWLEDGE[name]
        assert {"scope", "level"} <= set(record["profile"])
    for name in QUERY_ATTACKS:
        queries = records[name]["queries_per_sample"]
        budget = records[name]["settings"]["max_queries"]
        assert 0 < queries["median_successful"] <= budget, name
        assert max(records[name]["per_sample"]["queries"]) <= budget, name


@pytest.mark.slow
def test_defaults_of_fitted_attacks(fitted_results):
    records = {record["name"]: record for record in fitted_results["attacks"]}
    assert records["universal"]["success_rate"] > 0.6
    assert records["universal"]["profile"]["scope"] == "universal"
    assert records["patch"]["targeted"]
    assert records["patch"]["success_rate"] > 0.6
    assert records["patch"]["profile"]["level"] == "pixel"


def test_cli_runs_yaml_plan_on_onnx(lenet_onnx, tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"model: {lenet_onnx}\n"
        "limit: 20\n"
        "attacks:\n"
        "  - square:max_queries=100\n"
        "  - name: hsja\n"
        "    norm: linf\n"
        "    max_queries: 200\n"
        "    eps: 0.15\n"
    )
    assert len(load_plan(plan).attacks) == 2
    output = tmp_path / "out"
    assert main(["assess", "--plan", str(plan), "--output", str(output)]) == 0
    records = read_results(output)["attacks"]
    assert [record["name"] for record in records] == ["square", "hsja"]
    assert records[1]["norm"] == "linf"
    assert records[1]["queries_per_sample"]["median_successful"] <= 200
    assert "black-box decision-based" in (output / "report.md").read_text()


def test_cli_white_box_on_onnx_names_combination(lenet_onnx, tmp_path, capsys):
    status = main(["assess", "--model", str(lenet_onnx), "--attack", "fgsm", "--limit", "5", "--output", str(tmp_path)])
    assert status == 2
    message = capsys.readouterr().err
    assert "attack 'fgsm' is white-box" in message
    assert "ONNX model lenet.onnx" in message

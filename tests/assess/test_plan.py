import pytest

from mlwarden.assess import AttackSpec, Plan, load_plan, parse_spec
from mlwarden.attacks.registry import get_attack_entry
from mlwarden.errors import PlanError


def test_spec_with_settings():
    name, settings = parse_spec("BIM:eps=0.05,steps=20,early-stop=false")
    assert name == "bim"
    assert settings == {"eps": 0.05, "steps": 20, "early_stop": False}


def test_spec_with_list_value():
    name, settings = parse_spec("fgsm:eps=[0.05,0.1],target=random")
    assert settings == {"eps": [0.05, 0.1], "target": "random"}


@pytest.mark.parametrize("text, message", [("", "NAME"), (":eps=1", "no name"), ("fgsm:eps", "key=value"), ("fgsm:eps=1,eps=2", "twice")])
def test_bad_specs_rejected(text, message):
    with pytest.raises(PlanError, match=message):
        parse_spec(text)


def test_unknown_attack_lists_known_names():
    with pytest.raises(PlanError, match="known attacks: .*deepfool.*fgsm"):
        get_attack_entry("fgms")


def test_unknown_setting_lists_known_settings():
    entry = get_attack_entry("bim")
    with pytest.raises(PlanError, match="no setting 'stpes'.*steps"):
        entry.build({"stpes": 3})


def test_defaults_and_overrides():
    attack, call = get_attack_entry("bim").build({"steps": 3, "eps": 0.2})
    assert attack.steps == 3
    assert call == {"eps": 0.2}
    attack, call = get_attack_entry("fgsm").build({})
    assert call == {"eps": 0.1}


def test_yaml_plan(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(
        "model: lenet5\nlimit: 50\nseed: 3\nattacks:\n  - fgsm:eps=0.2\n  - name: bim\n    steps: 5\n"
    )
    plan = load_plan(path)
    assert plan.limit == 50
    assert plan.seed == 3
    assert plan.attacks == (AttackSpec("fgsm", {"eps": 0.2}), AttackSpec("bim", {"steps": 5}))


@pytest.mark.parametrize(
    "text, message",
    [
        ("- a\n- b\n", "must be a YAML mapping"),
        ("limt: 5\n", "unknown key 'limt'"),
        ("limit: -1\n", "limit must be a positive integer"),
        ("attacks: fgsm\n", "must be a list"),
        ("attacks:\n  - 3\n", "must be a string"),
        ("model: [\n", "not valid YAML"),
    ],
)
def test_bad_yaml_plans_rejected(tmp_path, text, message):
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    with pytest.raises(PlanError, match=message):
        load_plan(path)


def test_missing_plan_file_rejected(tmp_path):
    with pytest.raises(PlanError, match="not found"):
        load_plan(tmp_path / "absent.yaml")


def test_plan_rejects_zero_batch_size():
    with pytest.raises(PlanError, match="batch_size"):
        Plan(batch_size=0)

"""Work units: shards aligned to batches, seeds independent of the split, exact merges, resume."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from mlwarden.assess import AttackSpec, DefenseSpec, Plan, read_results, run_assessment
from mlwarden.assess.engines import UNITS_FOLDER, LocalEngine, get_engine, run_plan
from mlwarden.assess.merge import merge_units
from mlwarden.assess.units import SHARD_BATCHES, read_unit_files, shard_ranges, split_plan
from mlwarden.attacks import registry
from mlwarden.attacks.evasion import FGSM
from mlwarden.cli.main import main
from mlwarden.errors import ParameterError, PlanError

ATTACKS = (
    AttackSpec("fgsm"),
    AttackSpec("pgd", {"steps": 5}),
    AttackSpec("bim", {"steps": 5, "target": "random"}),
)
PLAN = Plan(limit=200, batch_size=50, attacks=ATTACKS)
SMALL_PLAN = Plan(limit=100, batch_size=50, attacks=(AttackSpec("fgsm"),))


class RecordingEngine:
    """Runs units in this process, records which ran, and raises KeyboardInterrupt after ``stop_after`` units."""

    name = "recording"

    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after = stop_after
        self.ran: list[str] = []

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}

    def run(self, task: Any, payload: Any, units: Sequence[Any]) -> Iterator[tuple[Any, dict[str, Any]]]:
        for unit in units:
            if self.stop_after is not None and len(self.ran) == self.stop_after:
                raise KeyboardInterrupt
            self.ran.append(unit.id)
            yield unit, task(unit, payload)


@pytest.fixture(scope="module")
def split_results() -> dict[str, Any]:
    """The plan run in shards of one batch, in this process."""
    return run_plan(PLAN, engine=LocalEngine(workers=1), shard_size=50, progress=False)


def test_shards_align_to_batches():
    ranges = shard_ranges(1000, 64, 100)
    assert ranges[0] == (0, 128)
    assert all(start % 64 == 0 for start, _ in ranges)
    assert ranges[-1] == (896, 1000)
    assert [stop for _, stop in ranges[:-1]] == [start for start, _ in ranges[1:]]
    assert shard_ranges(1000, 50) == [(0, 50 * SHARD_BATCHES), (200, 400), (400, 600), (600, 800), (800, 1000)]


def test_shard_size_must_be_positive():
    with pytest.raises(ParameterError, match="shard_size"):
        shard_ranges(100, 10, 0)


def test_unit_seeds_ignore_shard_and_follow_plan():
    units = split_plan(PLAN, ATTACKS, 300, "fingerprint", shard_size=100)
    attack_units = [unit for unit in units if unit.kind == "attack"]
    seeds = {index: {unit.seed for unit in attack_units if unit.attack_index == index} for index in range(3)}
    assert all(len(values) == 1 for values in seeds.values())
    assert len({next(iter(values)) for values in seeds.values()}) == 3
    reseeded = split_plan(PLAN.updated(seed=1), ATTACKS, 300, "fingerprint", shard_size=100)
    assert reseeded[-1].seed != units[-1].seed
    assert len({unit.id for unit in units}) == len(units) == 3 + 3 * 3
    assert len({unit.key for unit in units}) == len(units)


def test_prepared_attack_gets_one_shard(monkeypatch):
    class PreparedFGSM(FGSM):
        def prepare(self, model: Any, context: Any) -> None:
            pass

    entry = registry.AttackEntry("prepared-fgsm", PreparedFGSM, {}, 0.1, "FGSM with a preparation step")
    monkeypatch.setitem(registry.ATTACKS, entry.name, entry)
    units = split_plan(PLAN, (AttackSpec("prepared-fgsm"), AttackSpec("fgsm")), 300, "fingerprint", shard_size=100)
    prepared = [unit for unit in units if unit.attack_index == 0]
    plain = [unit for unit in units if unit.attack_index == 1]
    assert [(unit.start, unit.stop) for unit in prepared] == [(0, 300)]
    assert len(plain) == 3


def test_any_split_gives_same_results(split_results, result_figures):
    whole = run_plan(PLAN, engine=LocalEngine(workers=1), shard_size=200, progress=False)
    assert split_results["engine"]["units"] == 4 + 3 * 4
    assert whole["engine"]["units"] == 1 + 3
    assert result_figures(split_results) == result_figures(whole)


def test_split_run_matches_in_process_run(split_results):
    reference = run_assessment(PLAN, progress=False)
    assert split_results["clean"] == reference["clean"]
    for split, single in zip(split_results["attacks"], reference["attacks"], strict=True):
        for field in ("prediction", "success", "already_adversarial"):
            assert split["per_sample"][field] == single["per_sample"][field], (single["label"], field)
        for field in ("samples", "attacked", "successes", "accuracy", "success_rate", "gradients", "examples"):
            assert split[field] == single[field], (single["label"], field)
        # Merged norms come from per-sample values stored with six decimals.
        assert split["l2"]["mean"] == pytest.approx(single["l2"]["mean"], abs=1e-6)
        assert split["linf"]["median"] == pytest.approx(single["linf"]["median"], abs=1e-6)


def test_merge_rejects_missing_and_overlapping_units(tmp_path):
    folder = tmp_path / "units"
    plan = SMALL_PLAN
    results = run_plan(plan, engine=LocalEngine(workers=1), units_dir=folder, shard_size=50, progress=False)
    documents = read_unit_files(folder, None)
    header = {key: results[key] for key in ("schema", "data", "plan", "model")}
    fingerprint = next(iter(documents.values()))["fingerprint"]
    units = split_plan(plan, plan.attacks, 100, fingerprint, shard_size=50)
    assert {unit.key for unit in units} == set(documents)

    missing = dict(documents)
    del missing[units[-1].key]
    with pytest.raises(PlanError, match="has no result"):
        merge_units(header, units, missing)

    overlapping = [*units, split_plan(plan, plan.attacks, 100, fingerprint, shard_size=100)[-1]]
    documents[overlapping[-1].key] = {**documents[units[-1].key], "key": overlapping[-1].key}
    documents[overlapping[-1].key]["unit"] = {**documents[units[-1].key]["unit"], "start": 0, "stop": 100}
    with pytest.raises(PlanError):
        merge_units(header, overlapping, documents)


def test_interrupted_run_resumes_from_finished_units(tmp_path, split_results, result_figures):
    folder = tmp_path / "units"
    interrupted = RecordingEngine(stop_after=7)
    with pytest.raises(KeyboardInterrupt):
        run_plan(PLAN, engine=interrupted, shard_size=50, units_dir=folder, progress=False)
    assert len(list(folder.glob("*.unit.json"))) == 7

    resumed = RecordingEngine()
    results = run_plan(PLAN, engine=resumed, units_dir=folder, resume=True, progress=False)
    assert not set(resumed.ran) & set(interrupted.ran)
    assert len(resumed.ran) == results["engine"]["units"] - 7
    assert results["engine"]["resumed_units"] == 7
    assert result_figures(results) == result_figures(split_results)


def test_fresh_run_replaces_old_unit_files(tmp_path):
    folder = tmp_path / "units"
    engine = RecordingEngine()
    run_plan(SMALL_PLAN, engine=engine, shard_size=50, units_dir=folder, progress=False)
    rerun = RecordingEngine()
    run_plan(SMALL_PLAN, engine=rerun, shard_size=50, units_dir=folder, progress=False)
    assert rerun.ran == engine.ran
    assert len(list(folder.glob("*.unit.json"))) == len(engine.ran)


def test_cli_resume_reuses_unit_files(tmp_path):
    output = tmp_path / "run"
    arguments = ["assess", "--limit", "100", "--batch-size", "50", "--attack", "fgsm", "--shard-size", "50", "--workers", "1"]
    assert main([*arguments, "--output", str(output)]) == 0
    first = read_results(output)
    (output / "results.json").unlink()
    unit_files = sorted((output / UNITS_FOLDER).glob("a00-*.unit.json"))
    unit_files[0].unlink()

    assert main([*arguments, "--resume", str(output)]) == 0
    second = read_results(output)
    assert second["engine"]["resumed_units"] == second["engine"]["units"] - 1
    assert second["attacks"][0]["per_sample"] == first["attacks"][0]["per_sample"]


def test_cli_resume_needs_existing_directory(tmp_path, capsys):
    assert main(["assess", "--limit", "10", "--resume", str(tmp_path / "missing")]) == 2
    assert "directory not found" in capsys.readouterr().err


def test_dask_engine_without_dask_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)
    monkeypatch.delitem(sys.modules, "mlwarden.assess.engines.dask", raising=False)
    with pytest.raises(ParameterError, match=r"pip install 'mlwarden\[dask\]'"):
        get_engine("dask")
    assert main(["assess", "--limit", "10", "--attack", "fgsm", "--engine", "dask"]) == 2
    assert "mlwarden[dask]" in capsys.readouterr().err


def test_scheduler_needs_dask_engine():
    with pytest.raises(ParameterError, match="--engine dask"):
        get_engine("local", scheduler="tcp://127.0.0.1:8786")


def test_unit_files_are_versioned_json(tmp_path):
    folder = tmp_path / "units"
    run_plan(SMALL_PLAN, units_dir=folder, progress=False)
    for path in folder.glob("*.unit.json"):
        document = json.loads(path.read_text())
        assert document["schema"] == "mlwarden.unit/1"
        assert document["unit"]["id"] in path.name


def _without_seconds(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_seconds(item) for key, item in value.items() if key != "seconds"}
    if isinstance(value, list):
        return [_without_seconds(item) for item in value]
    return value


def test_defense_units_match_in_process_run():
    plan = SMALL_PLAN.updated(defenses=(DefenseSpec("bit-depth"),))
    results = run_plan(plan, engine=LocalEngine(workers=1), shard_size=50, progress=False)
    reference = run_assessment(plan, progress=False)
    assert [defense["name"] for defense in results["defenses"]] == ["bit-depth"]
    assert _without_seconds(results["defenses"]) == _without_seconds(reference["defenses"])

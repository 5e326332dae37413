"""End-to-end runs of ``mlwarden assess`` on real Fashion-MNIST images with the shipped LeNet."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mlwarden.assess import read_results
from mlwarden.cli.main import main


@pytest.fixture(scope="module")
def assessment(tmp_path_factory):
    output = tmp_path_factory.mktemp("assessment")
    status = main(["assess", "--limit", "300", "--batch-size", "150", "--output", str(output)])
    assert status == 0
    return output


def test_default_attacks_cut_accuracy(assessment):
    results = read_results(assessment)
    clean = results["clean"]["accuracy"]
    assert clean > 0.85
    assert [a["name"] for a in results["attacks"]] == ["fgsm", "bim", "deepfool", "jsma"]
    for attack in results["attacks"]:
        assert attack["accuracy"] < clean - 0.5, attack["name"]
        assert attack["success_rate"] > 0.5
        assert attack["l2"]["mean"] > 0
        assert attack["seconds"] > 0
        assert attack["gradients"] > 0


def test_results_have_schema_and_per_sample_data(assessment):
    results = json.loads((assessment / "results.json").read_text())
    assert results["schema"] == "mlwarden.results/1"
    assert results["data"]["samples"] == 300
    for attack in results["attacks"]:
        assert len(attack["per_sample"]["success"]) == 300
        assert {"goal", "knowledge", "level"} <= set(attack["profile"])


def test_report_and_figures_written(assessment):
    report = (assessment / "report.md").read_text()
    assert "| clean |" in report
    assert "| fgsm |" in report
    figures = sorted(p.name for p in assessment.glob("[0-9][0-9]-*.png"))
    assert figures == ["01-fgsm.png", "02-bim.png", "03-deepfool.png", "04-jsma.png"]
    for name in figures:
        assert (assessment / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_same_results(tmp_path):
    figures = []
    for run in range(2):
        output = tmp_path / f"run{run}"
        assert main(["assess", "--limit", "40", "--attack", "bim", "--attack", "jsma:gamma=0.05", "--output", str(output)]) == 0
        results = read_results(output)
        figures.append([(a["accuracy"], a["l2"]["mean"], a["per_sample"]["prediction"]) for a in results["attacks"]])
    assert figures[0] == figures[1]


def test_targeted_run_from_plan(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("limit: 40\nattacks:\n  - name: bim\n    eps: 0.2\n    target: next\n")
    assert main(["assess", "--plan", str(plan), "--output", str(tmp_path / "out")]) == 0
    attack = read_results(tmp_path / "out")["attacks"][0]
    assert attack["targeted"] is True
    labels = read_results(tmp_path / "out")["clean"]["per_sample"]["label"]
    for label, prediction, success in zip(labels, attack["per_sample"]["prediction"], attack["per_sample"]["success"]):
        assert bool(success) == (prediction == (label + 1) % 10)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--attack", "fgms"], "unknown attack 'fgms'"),
        (["--attack", "fgsm:eps=-1"], "eps must be a number >= 0"),
        (["--attack", "jsma:gamma=2"], "gamma must be a number in (0, 1]"),
        (["--model", "nothing-here"], "neither a zoo name"),
        (["--data", "/nonexistent/dir"], "unknown data set"),
        (["--limit", "0"], "limit must be a positive integer"),
        (["--attack", "deepfool:target=random"], "untargeted only"),
    ],
)
def test_bad_input_is_one_line_and_status_2(arguments, message):
    process = subprocess.run(
        [sys.executable, "-m", "mlwarden.cli.main", "assess", "--limit", "5", *arguments],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 2
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1, process.stderr
    assert lines[0].startswith("mlwarden: error:")
    assert message in lines[0]


def test_list_attacks(capsys):
    assert main(["assess", "--list-attacks"]) == 0
    output = capsys.readouterr().out
    for name in ("fgsm", "bim", "deepfool", "jsma"):
        assert name in output


def test_resume_repeats_saved_plan(tmp_path):
    output = tmp_path / "run"
    options = ["--attack", "fgsm", "--limit", "60", "--batch-size", "20", "--shard-size", "20"]
    assert main(["assess", *options, "--output", str(output)]) == 0
    first = read_results(output)
    assert main(["assess", "--resume", str(output)]) == 0
    resumed = read_results(output)
    assert [a["label"] for a in resumed["attacks"]] == ["fgsm"]
    assert resumed["data"]["samples"] == 60
    assert resumed["engine"]["resumed_units"] == resumed["engine"]["units"]
    assert resumed["attacks"][0]["per_sample"] == first["attacks"][0]["per_sample"]


def test_rerun_removes_stale_figures(tmp_path, capsys):
    assert main(["assess", "--attack", "fgsm", "--attack", "bim", "--limit", "20", "--output", str(tmp_path)]) == 0
    assert main(["assess", "--attack", "bim", "--limit", "20", "--output", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("[0-9][0-9]-*.png")) == ["01-bim.png"]
    assert "and 1 figure in" in capsys.readouterr().out


@pytest.mark.parametrize("eps", ["abc", "-1", "[0.1,abc]"])
def test_invalid_eps_rejected(eps, tmp_path, capsys):
    assert main(["assess", "--attack", f"fgsm:eps={eps}", "--limit", "20", "--output", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "eps must be" in error
    assert "Traceback" not in error


def test_output_under_a_file_rejected(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    assert main(["assess", "--attack", "fgsm", "--limit", "20", "--output", str(blocker)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["assess", "--attack", "fgsm", "--limit", "20", "--output", str(blocker / "sub")]) == 2
    assert f"because its parent {str(blocker)!r} is a file" in capsys.readouterr().err


def test_out_of_range_label_blames_data(tmp_path, fashion_test, capsys):
    import gzip
    import struct

    import numpy as np

    def write(path, array):
        header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
        path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))

    images = (fashion_test.images[:50, 0] * 255).round().numpy().astype(np.uint8)
    labels = fashion_test.labels[:50].numpy().astype(np.uint8)
    labels[3] = 42
    for prefix in ("train", "t10k"):
        write(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        write(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    assert main(["assess", "--data", str(tmp_path), "--attack", "fgsm", "--output", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "sample 3 of the" in error
    assert "labels is 42, but the model outputs 10 classes" in error


def test_targeted_results_record_targets(tmp_path):
    assert main(["assess", "--attack", "bim:target=random", "--limit", "40", "--batch-size", "20", "--output", str(tmp_path)]) == 0
    per_sample = read_results(tmp_path)["attacks"][0]["per_sample"]
    assert len(per_sample["target"]) == 40
    for target, prediction, success in zip(per_sample["target"], per_sample["prediction"], per_sample["success"]):
        assert bool(success) == (prediction == target)
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == (tmp_path / "report.md").stat().st_mode & 0o777


def test_rejected_setting_keeps_saved_plan(tmp_path, capsys):
    assert main(["assess", "--attack", "fgsm", "--limit", "20", "--output", str(tmp_path)]) == 0
    saved = (tmp_path / "plan.yaml").read_text()
    assert main(["assess", "--attack", "bim:steps=-1", "--limit", "20", "--output", str(tmp_path)]) == 2
    assert "steps" in capsys.readouterr().err
    assert (tmp_path / "plan.yaml").read_text() == saved


@pytest.mark.parametrize(("kind", "expected"), [("folder", "is a folder"), ("binary", "is not UTF-8 text")])
def test_unreadable_plan_rejected(kind, expected, tmp_path, capsys):
    plan = tmp_path / "plan"
    if kind == "folder":
        plan.mkdir()
    else:
        plan.write_bytes(b"\xff\xfe\x00attacks")
    assert main(["assess", "--plan", str(plan)]) == 2
    assert expected in capsys.readouterr().err


def test_rerun_without_sweep_removes_stale_curves(tmp_path):
    assert main(["assess", "--attack", "deepfool", "--limit", "20", "--output", str(tmp_path)]) == 0
    assert (tmp_path / "robustness-curves.png").exists()
    assert main(["assess", "--attack", "fgsm", "--limit", "20", "--output", str(tmp_path)]) == 0
    assert not (tmp_path / "robustness-curves.png").exists()


def test_figure_count_includes_the_curves(tmp_path, capsys):
    assert main(["assess", "--attack", "deepfool", "--limit", "20", "--output", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["01-deepfool.png", "robustness-curves.png"]
    assert "and 2 figures in" in capsys.readouterr().out


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--model", "os.path:join"], "failed when called without arguments: TypeError"),
        (["--model", "lenet5", "--weights", "README.md"], "the zoo loads its own weights"),
        (["--output", "/proc/mlwarden-test-output"], "cannot write to '/proc/mlwarden-test-output'"),
        (["--model", "no_such_module_here:build"], "with PYTHONPATH set to the folder that holds it"),
    ],
    ids=["factory-needs-arguments", "zoo-with-weights", "unwritable-output", "module-not-importable"],
)
def test_model_and_output_errors_one_line(arguments, message, capsys):
    assert main(["assess", "--attack", "fgsm", "--limit", "5", *arguments]) == 2
    error = capsys.readouterr().err
    assert message in error
    assert "Traceback" not in error


def test_resume_without_earlier_run_rejected(tmp_path, capsys):
    assert main(["assess", "--resume", str(tmp_path)]) == 2
    assert "no earlier assessment found there" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()

"""make bench on the CPU: both pipelines run on the same files and the results are written."""

import functools
import json
import re
import signal
import subprocess
import sys
import time

import pytest
from helpers import MODEL, REPO, cli_in_process, run, script_module

pytestmark = pytest.mark.slow


BENCH_ARGS = ["--batch-size", "32", "--workers", "0", "--warmup-steps", "1", "--steps", "3", "--accuracy-epochs", "1"]


def test_bench_measures_baseline_and_project_side_by_side(sample_dir, tmp_path):
    result = run(
        sys.executable, "bench/run.py", "--data", sample_dir, *BENCH_ARGS, "--accuracy-seeds", "42,7", "--no-compile",
        "--repeats", "1", "--model", MODEL, "--out", tmp_path,
    )  # fmt: skip
    (result_file,) = tmp_path.glob("*.json")
    result = json.loads(result_file.read_text())
    assert result["data"] == {"path": str(sample_dir), "synthetic": True, "train_images": 432}  # a make data-sample folder
    assert result["settings"]["model"] == MODEL and result["machine"]["device"] == "cpu"
    pipe, training = result["input_pipeline"], result["training"]
    assert pipe["baseline_samples_per_s"] > 0 and pipe["project_samples_per_s"] > 0 and pipe["project_prepare_seconds"] > 0
    assert pipe["speedup"] == pytest.approx(pipe["project_samples_per_s"] / pipe["baseline_samples_per_s"])
    for side in ("baseline", "project"):
        assert training[side]["images_per_s"] > 0 and 0 <= training[side]["data_wait_share"] < 1
    assert result["model_only_images_per_s"] > 0
    ablation = result["ablation"]
    assert list(ablation)[0] == "project path (the default)" and ablation["project path (the default)"] == training["project"]
    assert {"NCHW, not channels_last", "fp32, no autocast", "a host sync (.item()) every step, not every 10"} <= set(ablation)
    assert all(row["images_per_s"] > 0 for row in ablation.values())
    accuracy = result["time_to_accuracy"]
    for side in ("baseline", "project"):  # read from each run's own record of its time
        (epoch,) = accuracy[side]["epochs"]
        assert epoch["epoch"] == 1 and 0 <= epoch["val_acc"] <= 1
        assert 0 < accuracy[side]["startup_seconds"] < epoch["seconds"] <= accuracy[side]["finished_seconds"]
    # the first seed's runs in full, then every seed's final accuracy, run by run
    assert accuracy["seed"] == 42 and [f["seed"] for f in accuracy["final_val_acc"]] == [42, 7]
    first = accuracy["final_val_acc"][0]
    for side in ("baseline", "project"):
        assert first[side] == accuracy[side]["epochs"][-1]["val_acc"]
    budget = result["budget"]  # every row measured, each with its seconds, within the default budget
    assert budget["skipped"] == [] and budget["stopped"] is None and budget["used_seconds"] < budget["seconds"] == 1200
    assert [row["name"] for row in budget["rows"]][:4] == [
        "input pipeline",
        "project path (the default)",
        "model only",
        "baseline training",
    ]
    assert len(budget["rows"]) == 4 + 2 + len(ablation) - 1 and all(row["seconds"] > 0 for row in budget["rows"])
    table = result_file.with_suffix(".md").read_text()
    assert "| training end to end, images/s |" in table and "432 train images" in table
    assert "| NCHW, not channels_last |" in table and "| val_acc after epoch 1 (seed 42) |" in table
    assert "| val_acc after epoch 1, seed 7 |" in table and "| mean over the 2 seeds |" in table
    assert result_file.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_keeps_to_its_budget_and_writes_what_it_measured(sample_dir, tmp_path):
    """A budget too short for every row: the rows that fit are measured, printed as they finish and written; the row
    running at the deadline is stopped (here a time-to-accuracy pair, in its own processes) and named with the rest."""
    start = time.monotonic()
    process = run(
        sys.executable, "bench/run.py", "--data", sample_dir, *BENCH_ARGS, "--budget", "10", "--no-compile",
        "--repeats", "1", "--out", tmp_path,
    )  # fmt: skip
    wall = time.monotonic() - start
    (result_file,) = tmp_path.glob("*.json")
    result = json.loads(result_file.read_text())
    assert result["settings"]["model"] == "resnet10t"  # the default on the CPU
    budget = result["budget"]
    assert budget["seconds"] == 10 and 10 <= budget["used_seconds"] < 10 + 2  # the deadline stopped the row running
    assert budget["stopped"] == "out of time" and budget["skipped"]
    measured = [row["name"] for row in budget["rows"]]
    order = ["input pipeline", "project path (the default)", "model only", "baseline training", "time to accuracy, seed 42"]
    assert measured == order[: len(measured)] and len(measured) >= 2 and budget["skipped"][0] == order[len(measured)]
    assert sum(row["seconds"] for row in budget["rows"]) < 10 and result["training"]["project"]["images_per_s"] > 0
    for name in measured:
        assert re.search(rf"^\[ *[0-9.]+ s\] {re.escape(name)}: .* \([0-9.]+ s\)$", process.stderr, re.MULTILINE), name
    # one row ran into the deadline and was stopped; a training row that needed more than was left before it was
    # skipped (on a loaded machine the baseline's may not fit after the project's)
    stopped = re.findall(r"^\[ *[0-9.]+ s\] stopped: (.+) \(out of time\)$", process.stderr, re.MULTILINE)
    assert len(stopped) == 1 and stopped[0] in budget["skipped"], process.stderr
    for name in budget["skipped"][: budget["skipped"].index(stopped[0])]:
        skipped = rf"^\[ *[0-9.]+ s\] skipped: {re.escape(name)} \(needs about \d+ s, \d+ s left\)$"
        assert re.search(skipped, process.stderr, re.MULTILINE), process.stderr
    table = result_file.with_suffix(".md").read_text()
    assert f"Not measured (out of time): {budget['skipped'][0]}; " in table and "| input pipeline, samples/s |" in table
    assert wall < 10 + 60  # imports, the sample's prepare and the report: the budget bounds the rest


def test_an_interrupted_bench_writes_what_it_measured(sample_dir, tmp_path):
    process = subprocess.Popen(
        [sys.executable, "bench/run.py", "--data", str(sample_dir), *BENCH_ARGS, "--out", str(tmp_path)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    for line in process.stderr:
        if "] project path (the default): " in line:
            process.send_signal(signal.SIGINT)
            break
    stdout, _ = process.communicate(timeout=120)
    assert process.returncode == 130
    result = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert result["budget"]["stopped"] == "interrupted"
    assert [row["name"] for row in result["budget"]["rows"]][:2] == ["input pipeline", "project path (the default)"]
    assert result["training"]["project"]["images_per_s"] > 0 and "results: " in stdout


@functools.cache
def bench_main():
    """bench/run.py's main(argv), imported beside its modules (measure, baseline, budget, report), as Python runs it."""
    sys.path.insert(0, str(REPO / "bench"))
    return script_module(REPO / "bench" / "run.py", "bench_run").main


@pytest.mark.parametrize("flag, value", [("--accuracy-seeds", "42,x"), ("--budget", "0"), ("--budget", "nan")])
def test_bench_rejects_a_bad_seed_list_or_budget(tmp_path, flag, value):
    result = cli_in_process(bench_main(), flag, value, "--out", tmp_path, check=False)
    assert result.returncode == 2 and flag in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


def test_an_unknown_project_stops_the_benchmark_before_it_starts(tmp_path):
    result = cli_in_process(bench_main(), "--project", "nope", "--out", tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: unknown project 'nope'")
    assert result.stdout == "" and not list(tmp_path.iterdir())  # nothing measured, nothing written

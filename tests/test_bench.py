"""make bench on the CPU: both pipelines run on the same files and the results are written."""

import json
import sys

import pytest
from helpers import run

pytestmark = pytest.mark.slow


def test_bench_measures_baseline_and_project_side_by_side(sample_dir, tmp_path):
    run(
        sys.executable,
        "bench/run.py",
        "--data",
        sample_dir,
        "--batch-size",
        "32",
        "--workers",
        "0",
        "--warmup-epochs",
        "0",
        "--model-only-steps",
        "2",
        "--accuracy-epochs",
        "1",
        "--accuracy-seeds",
        "42,7",
        "--no-compile",
        "--repeats",
        "1",
        "--out",
        tmp_path,
    )
    (result_file,) = tmp_path.glob("*.json")
    result = json.loads(result_file.read_text())
    assert result["data"] == {"path": str(sample_dir), "synthetic": True, "train_images": 432}  # a make data-sample folder
    assert result["settings"]["model"] == "resnet10t" and result["machine"]["device"] == "cpu"
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
    for side in ("baseline", "project"):
        (epoch,) = accuracy[side]["epochs"]
        assert epoch["epoch"] == 1 and 0 <= epoch["val_acc"] <= 1 and epoch["seconds"] > accuracy[side]["startup_seconds"] > 0
    # the first seed's runs in full, then every seed's final accuracy, run by run
    assert accuracy["seed"] == 42 and [f["seed"] for f in accuracy["final_val_acc"]] == [42, 7]
    first = accuracy["final_val_acc"][0]
    for side in ("baseline", "project"):
        assert first[side] == accuracy[side]["epochs"][-1]["val_acc"]
    table = result_file.with_suffix(".md").read_text()
    assert "| training end to end, images/s |" in table and "432 train images" in table
    assert "| NCHW, not channels_last |" in table and "| val_acc after epoch 1 (seed 42) |" in table
    assert "| val_acc after epoch 1, seed 7 |" in table and "| mean over the 2 seeds |" in table
    assert result_file.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_rejects_a_bad_seed_list(tmp_path):
    result = run(sys.executable, "bench/run.py", "--accuracy-seeds", "42,x", "--out", tmp_path, check=False)
    assert result.returncode == 2 and "--accuracy-seeds" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


def test_an_unknown_project_stops_the_benchmark_before_it_starts(tmp_path):
    result = run(sys.executable, "bench/run.py", "--project", "nope", "--out", tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: unknown project 'nope'")
    assert result.stdout == "" and not list(tmp_path.iterdir())  # nothing measured, nothing written

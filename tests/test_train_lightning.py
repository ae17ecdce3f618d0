"""eurosat-lightning end to end, in real processes: Trainer on CPU, DDP with 2 processes, resume, evaluate, predict."""

import json

import pytest
import torch
from conftest import (
    DDP_ARGS,
    SMALL,
    check_evaluate_and_predict,
    check_resume_equals_uninterrupted,
    check_two_process_run,
    read_metrics,
    run_project,
    single_run_dir,
)

from eurosat.training import cpu_has_native_bf16

pytestmark = pytest.mark.slow
PROJECT = "eurosat-lightning"


@pytest.fixture(scope="module")
def trained(sample_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lightning-runs")
    result = run_project(PROJECT, "train", "--data", sample_dir, "--out", out, "--epochs", "2", "--profiler", "simple", *SMALL)
    return single_run_dir(out), result


def test_trains_clearly_above_chance_and_writes_the_run_directory(trained):
    run_dir, result = trained
    history = read_metrics(run_dir)
    assert [r["epoch"] for r in history] == [1, 2] and history[-1]["val_acc"] > 0.5
    assert all(r["val_samples"] == 108 for r in history)
    assert "Epoch 2/2 loss " in result.stdout
    for name in ("config.json", "metrics.json", "last.ckpt", "best.ckpt", "provenance.json"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert list(run_dir.glob("*profile*.txt"))  # the simple profiler's report
    config = json.loads((run_dir / "config.json").read_text())
    cpu_precision = "bf16-mixed" if cpu_has_native_bf16() else "32-true"  # bf16 only where the CPU has it natively
    assert config["precision_resolved"] == cpu_precision and config["world_size"] == 1
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["versions"]["pytorch_lightning"] and provenance["lockfile"]["sha256"]
    checkpoint = torch.load(run_dir / "best.ckpt", weights_only=False)
    assert checkpoint["hyper_parameters"]["model_name"] == "resnet10t"


def test_ddp_on_two_cpu_processes_counts_every_validation_sample_once(sample_dir, tmp_path):
    ddp = ["--devices", "2", "--strategy", "ddp"]
    result = run_project(PROJECT, "train", "--data", sample_dir, "--out", tmp_path, *ddp, *DDP_ARGS)
    check_two_process_run(result, tmp_path)


def test_resume_equals_uninterrupted(trained, sample_dir, tmp_path):
    check_resume_equals_uninterrupted(PROJECT, trained[0], sample_dir, tmp_path, weights="state_dict")


def test_evaluate_and_predict(trained, sample_dir):
    check_evaluate_and_predict(PROJECT, trained[0], sample_dir)

"""eurosat-amp end to end, in real processes: training, run directory, resume, torchrun DDP, evaluate, predict."""

import json
import sys

import pytest
import torch
from conftest import (
    DDP_ARGS,
    SMALL,
    check_evaluate_and_predict,
    check_resume_equals_uninterrupted,
    check_two_process_run,
    read_metrics,
    run,
    run_project,
    single_run_dir,
)

pytestmark = pytest.mark.slow
PROJECT = "eurosat-amp"
EPOCH_KEYS = {"epoch", "loss", "acc", "val_loss", "val_acc", "val_samples", "images_per_s", "seconds"}


@pytest.fixture(scope="module")
def trained(sample_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("amp-runs")
    result = run_project(PROJECT, "train", "--data", sample_dir, "--out", out, "--epochs", "2", *SMALL)
    return single_run_dir(out), result


def test_trains_clearly_above_chance(trained):
    run_dir, result = trained
    history = read_metrics(run_dir)
    assert [r["epoch"] for r in history] == [1, 2]
    assert history[-1]["val_acc"] > 0.5  # 10 classes: chance is 0.1
    assert "Epoch 2/2 loss " in result.stdout and " val_acc " in result.stdout


def test_run_directory_is_complete(trained):
    run_dir, _ = trained
    for name in ("config.json", "metrics.jsonl", "metrics.json", "last.ckpt", "best.ckpt", "provenance.json"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    history = read_metrics(run_dir)
    assert all(set(r) == EPOCH_KEYS for r in history)
    assert all(r["val_samples"] == 108 for r in history)
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["epochs"] == 2 and summary["best"]["val_acc"] == max(r["val_acc"] for r in history)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"] == "resnet10t" and config["bands_resolved"] == [3, 2, 1] and config["scale"] == 4000.0

    checkpoint = torch.load(run_dir / "last.ckpt", weights_only=False)
    assert {"model", "optimizer", "scaler", "epoch", "rng", "history", "config"} <= set(checkpoint)
    assert checkpoint["epoch"] == 2


def test_provenance_records_what_ran(trained):
    run_dir, _ = trained
    record = json.loads((run_dir / "provenance.json").read_text())
    assert record["versions"]["torch"] == torch.__version__ and record["versions"]["timm"]
    assert record["versions"]["python"] and record["versions"]["pytorch_lightning"]
    assert len(record["lockfile"]["sha256"]) == 64
    assert len(record["git"]["commit"]) == 40 and isinstance(record["git"]["dirty"], bool)
    assert record["seed"] == 42 and record["hardware"]["device"] == "cpu" and record["hardware"]["host"]
    assert "train.py" in " ".join(record["command"]) and "--epochs" in record["command"]
    assert "in_container" in record["container"]


def test_resume_equals_uninterrupted(trained, sample_dir, tmp_path):
    check_resume_equals_uninterrupted(PROJECT, trained[0], sample_dir, tmp_path, weights="model")


def test_evaluate_and_predict(trained, sample_dir):
    check_evaluate_and_predict(PROJECT, trained[0], sample_dir)


def test_torchrun_two_processes_count_every_validation_sample_once(sample_dir, tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = run(*launcher, f"projects/{PROJECT}/train.py", "train", "--data", sample_dir, "--out", tmp_path, *DDP_ARGS)
    check_two_process_run(result, tmp_path)


def test_profile_writes_a_trace(sample_dir, tmp_path):
    run_project(PROJECT, "train", "--data", sample_dir, "--out", tmp_path, "--epochs", "1", "--profile", *SMALL)
    assert list((single_run_dir(tmp_path) / "profile").glob("*.json"))

"""eurosat-lightning end to end, in real processes: Trainer on CPU, DDP with 2 processes, resume, evaluate, predict."""

import json

import pytest
import torch
from conftest import SMALL, run_project, single_run_dir
from test_train_amp import read_metrics, without_timings

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
    assert config["precision_resolved"] == "32-true" and config["world_size"] == 1
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["versions"]["pytorch_lightning"] and provenance["lockfile"]["sha256"]
    checkpoint = torch.load(run_dir / "best.ckpt", weights_only=False)
    assert checkpoint["hyper_parameters"]["model_name"] == "resnet10t"


def test_ddp_on_two_cpu_processes_counts_every_validation_sample_once(sample_dir, tmp_path):
    result = run_project(
        PROJECT,
        "train",
        "--data",
        sample_dir,
        "--out",
        tmp_path,
        "--epochs",
        "1",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--batch-size",
        "32",
        "--model",
        "resnet10t",
        "--workers",
        "0",
        "--val-fraction",
        "0.25",
    )
    run_dir = single_run_dir(tmp_path)  # the launched process joined rank 0's run directory
    (record,) = read_metrics(run_dir)
    assert record["val_samples"] == 135  # odd: a padding sampler would count 136
    assert json.loads((run_dir / "config.json").read_text())["world_size"] == 2
    assert result.stdout.count("Epoch 1/1 loss") == 1


def test_resume_equals_uninterrupted(trained, sample_dir, tmp_path):
    full_dir, _ = trained
    run_project(PROJECT, "train", "--data", sample_dir, "--out", tmp_path, "--epochs", "1", *SMALL)
    half_dir = single_run_dir(tmp_path)
    result = run_project(PROJECT, "train", "--resume", half_dir, "--epochs", "2", "--workers", "0")
    assert "Epoch 2/2" in result.stdout and "Epoch 1/2" not in result.stdout
    assert without_timings(read_metrics(half_dir)) == without_timings(read_metrics(full_dir))
    resumed = torch.load(half_dir / "last.ckpt", weights_only=False)["state_dict"]
    uninterrupted = torch.load(full_dir / "last.ckpt", weights_only=False)["state_dict"]
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


def test_evaluate_and_predict(trained, sample_dir):
    run_dir, _ = trained
    best = json.loads((run_dir / "metrics.json").read_text())["best"]
    result = run_project(PROJECT, "evaluate", run_dir / "best.ckpt")
    assert f"val_acc {best['val_acc']:.4f} on 108 validation images" in result.stdout
    files = [sample_dir / name / f"{name}_{n}.tif" for name in ("Forest", "Industrial", "SeaLake") for n in (1, 2, 3, 4)]
    lines = [line.split("\t") for line in run_project(PROJECT, "predict", run_dir / "best.ckpt", *files).stdout.splitlines()]
    assert [line[0] for line in lines] == [str(f) for f in files]
    assert sum(f.parent.name == label for f, (_, label, _) in zip(files, lines, strict=True)) >= 8

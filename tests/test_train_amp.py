"""eurosat-amp end to end, in real processes: training, run directory, resume, torchrun DDP, evaluate, predict."""

import json
import sys

import pytest
import torch
from conftest import SMALL, run, run_project, single_run_dir

pytestmark = pytest.mark.slow
PROJECT = "eurosat-amp"
EPOCH_KEYS = {"epoch", "loss", "acc", "val_loss", "val_acc", "val_samples", "images_per_s", "seconds"}


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_timings(history):
    return [{k: v for k, v in r.items() if k not in ("images_per_s", "seconds")} for r in history]


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
    full_dir, _ = trained
    run_project(PROJECT, "train", "--data", sample_dir, "--out", tmp_path, "--epochs", "1", *SMALL)
    half_dir = single_run_dir(tmp_path)
    result = run_project(PROJECT, "train", "--resume", half_dir, "--epochs", "2", "--workers", "0")
    assert "Epoch 2/2" in result.stdout and "Epoch 1/2" not in result.stdout  # continued at the next epoch
    assert without_timings(read_metrics(half_dir)) == without_timings(read_metrics(full_dir))
    resumed = torch.load(half_dir / "last.ckpt", weights_only=False)["model"]
    uninterrupted = torch.load(full_dir / "last.ckpt", weights_only=False)["model"]
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)


def test_evaluate_reproduces_the_recorded_validation_accuracy(trained, sample_dir):
    run_dir, _ = trained
    best = json.loads((run_dir / "metrics.json").read_text())["best"]
    result = run_project(PROJECT, "evaluate", run_dir / "best.ckpt")
    assert f"val_acc {best['val_acc']:.4f} on 108 validation images" in result.stdout


def test_predict_names_a_class_per_file(trained, sample_dir):
    run_dir, _ = trained
    files = [sample_dir / name / f"{name}_{n}.tif" for name in ("Forest", "River", "SeaLake") for n in (1, 2, 3, 4)]
    result = run_project(PROJECT, "predict", run_dir / "best.ckpt", *files)
    lines = [line.split("\t") for line in result.stdout.strip().splitlines()]
    assert [line[0] for line in lines] == [str(f) for f in files]
    assert all(0 < float(p) <= 1 for _, _, p in lines)
    correct = sum(f.parent.name == label for f, (_, label, _) in zip(files, lines, strict=True))
    assert correct >= 8  # of 12; chance is about 1


def test_torchrun_two_processes_count_every_validation_sample_once(sample_dir, tmp_path):
    result = run(
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        f"projects/{PROJECT}/train.py",
        "train",
        "--data",
        sample_dir,
        "--out",
        tmp_path,
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--model",
        "resnet10t",
        "--workers",
        "0",
        "--val-fraction",
        "0.25",
    )
    run_dir = single_run_dir(tmp_path)  # both ranks agreed on one run directory
    (record,) = read_metrics(run_dir)
    assert record["val_samples"] == 135  # odd: a padding sampler would count 136
    assert json.loads((run_dir / "config.json").read_text())["world_size"] == 2
    assert result.stdout.count("Epoch 1/1 loss") == 1  # rank 0 prints, rank 1 does not


def test_profile_writes_a_trace(sample_dir, tmp_path):
    run_project(PROJECT, "train", "--data", sample_dir, "--out", tmp_path, "--epochs", "1", "--profile", *SMALL)
    assert list((single_run_dir(tmp_path) / "profile").glob("*.json"))

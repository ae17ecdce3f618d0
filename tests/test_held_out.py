"""A held-out test part (--split torchgeo, --test-fraction): the end of a run scores best.ckpt on it once, the
summary reports it beside validation, `evaluate --split test` repeats it, and nothing before that reads it."""

import json
import shutil

import numpy as np
import pytest
import tifffile
from helpers import PROJECTS, SMALL, main_in_process, read_metrics, single_run_dir, without_timings

from eurosat.sample import synthetic_image

SPLIT = ["--split", "torchgeo", "--deterministic", "--epochs", "2", *SMALL]


def train(project, data, out):
    result = main_in_process(project, "train", "--data", data, "--out", out, *SPLIT)
    return single_run_dir(out), result


@pytest.mark.parametrize("project", PROJECTS)
def test_changing_the_test_images_changes_no_training_metric_only_the_test_score(project, sample_dir, tmp_path):
    data = shutil.copytree(sample_dir, tmp_path / "eurosat")
    first, result = train(project, data, tmp_path / "first")
    assert ": 324 train / 108 val / 108 test images (torchgeo split), " in result.stdout.splitlines()[0]
    test = json.loads((first / "test_evaluation.json").read_text())
    assert (
        test["part"] == "test"
        and test["samples"] == test["test_samples"] == 108
        and test["checkpoint"] == str(first / "best.ckpt")
    )
    for name in ("test_confusion_matrix.csv", "test_confusion_matrix.png", "evaluation.json"):
        assert (first / name).is_file(), name
    summary = json.loads((first / "metrics.json").read_text())
    assert summary["split"] == "torchgeo" and summary["selected_on"] == "val_acc"
    assert summary["test"] == {"loss": test["test_loss"], "acc": test["test_acc"], "samples": 108}
    assert f"test_acc {test['test_acc']:.4f} on 108 test images (best.ckpt, chosen by val_acc)" in result.stdout

    rng = np.random.default_rng(1)  # every test image replaced by another class's picture
    for name in (data / "eurosat-test.txt").read_text().split():
        stem = name.rsplit(".", 1)[0]
        class_name = stem.rsplit("_", 1)[0]
        other = (sorted(p.name for p in data.iterdir() if p.is_dir()).index(class_name) + 3) % 10
        tifffile.imwrite(data / class_name / f"{stem}.tif", synthetic_image(other, rng), photometric="minisblack")
    second, _ = train(project, data, tmp_path / "second")
    assert without_timings(read_metrics(second)) == without_timings(read_metrics(first))
    assert (
        json.loads((second / "evaluation.json").read_text())["accuracy"]
        == json.loads((first / "evaluation.json").read_text())["accuracy"]
    )
    changed = json.loads((second / "test_evaluation.json").read_text())
    assert changed["test_acc"] < test["test_acc"] - 0.5  # the test part is what changed, and the score shows it

    again = main_in_process(project, "evaluate", second / "best.ckpt", "--split", "test", "--out", tmp_path / "again")
    assert again.value["test_acc"] == changed["test_acc"] and again.value["test_samples"] == 108
    assert f"test_acc {changed['test_acc']:.4f} on 108 test images of {data}" in again.stdout
    assert (tmp_path / "again" / "test_evaluation.json").is_file()


def test_a_test_fraction_holds_out_a_test_part_and_a_run_without_one_says_so(sample_dir, tmp_path):
    project = PROJECTS[0]
    out = tmp_path / "runs"
    result = main_in_process(
        project, "train", "--data", sample_dir, "--out", out, "--epochs", "1", "--test-fraction", "0.2", *SMALL
    )
    run_dir = single_run_dir(out)
    assert ": 345 train / 87 val / 108 test images (articles split), " in result.stdout.splitlines()[0]
    assert json.loads((run_dir / "metrics.json").read_text())["test"]["samples"] == 108

    plain = main_in_process(project, "train", "--data", sample_dir, "--out", tmp_path / "plain", "--epochs", "1", *SMALL)
    plain_dir = single_run_dir(tmp_path / "plain")
    assert not (plain_dir / "test_evaluation.json").exists() and "test" not in json.loads(
        (plain_dir / "metrics.json").read_text()
    )
    assert "test images" not in plain.stdout
    refused = main_in_process(project, "evaluate", plain_dir / "best.ckpt", "--split", "test", check=False)
    assert refused.returncode == 2
    no_test = "run has no test part; train with --split torchgeo or --test-fraction F"
    assert refused.stderr == f"error: --split test: {plain_dir / 'best.ckpt'}'s {no_test}\n"

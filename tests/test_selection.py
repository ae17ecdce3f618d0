"""--select: which epoch's weights are best.ckpt, and what metrics.json says chose them."""

import json

import pytest
from helpers import PROJECTS, SMALL, main_in_process, single_run_dir

from eurosat import selection
from eurosat.runs import load_checkpoint


def epoch(number: int, acc: float, loss: float) -> dict:
    return {"epoch": number, "val_acc": acc, "val_loss": loss}


def test_a_tie_goes_to_the_other_metric_then_to_the_earlier_epoch():
    history = [epoch(1, 1.0, 0.30), epoch(2, 1.0, 0.10), epoch(3, 1.0, 0.10), epoch(4, 0.9, 0.01)]
    assert selection.best(history, "val_acc")["epoch"] == 2  # tied at 1.000: the lower loss, then the earlier
    assert selection.best(history, "val_loss")["epoch"] == 4
    assert selection.improves(epoch(5, 1.0, 0.05), history, "val_acc")
    assert not selection.improves(epoch(5, 1.0, 0.10), history, "val_acc")  # a full tie keeps the earlier epoch
    assert not selection.improves(epoch(5, 0.85, 0.01), history, "val_loss")  # the same loss, a lower accuracy
    assert selection.improves(epoch(5, 0.95, 0.01), history, "val_loss")  # the same loss, a higher accuracy
    assert selection.best([], "val_loss") is None and selection.improves(epoch(1, 0.0, 9.9), [], "val_loss")


@pytest.mark.slow
@pytest.mark.parametrize("project", PROJECTS)
def test_select_val_loss_keeps_the_lowest_loss_epoch_in_best_ckpt(project, sample_dir, tmp_path):
    main_in_process(project, "train", "--data", sample_dir, "--out", tmp_path, "--epochs", "3", "--select", "val_loss", *SMALL)
    run_dir = single_run_dir(tmp_path)
    summary = json.loads((run_dir / "metrics.json").read_text())
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert summary["selected_on"] == "val_loss" and json.loads((run_dir / "config.json").read_text())["select"] == "val_loss"
    chosen = min(history, key=lambda record: (record["val_loss"], -record["val_acc"]))  # the earliest of equals: min's
    assert summary["best"]["epoch"] == chosen["epoch"]
    assert load_checkpoint(run_dir / "best.ckpt")["history"][-1]["epoch"] == chosen["epoch"]  # best.ckpt is that epoch's
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert evaluation["val_loss"] == chosen["val_loss"]  # the end-of-run evaluation reports the chosen epoch

"""A project's own recipe, changed in its own folder: test projects, written by `make new-project` in a copy of the
repository, replace the loss and the optimizer (from eurosat-amp) or add Lightning callbacks (from eurosat-lightning)
in their train.py alone, and their runs keep exact mid-epoch resume, provenance and the end-of-run evaluation."""

import csv
import json
import os
import sys

import pytest
import torch
from helpers import (
    PACED,
    SMALL,
    assert_same_weights,
    copy_repository,
    in_clone,
    kill_after_first_checkpoint,
    make_in_clone,
    read_metrics,
    run_project,
    single_run_dir,
    without_timings,
)

from eurosat import recipe

pytestmark = pytest.mark.slow

FOCAL = '''

def focal_loss(logits, labels, gamma=2.0):
    """Focal loss (Lin et al., 2017): cross-entropy down-weighted by (1 - p)^gamma where the class is already likely."""
    log_p = logits.float().log_softmax(1).gather(1, labels[:, None]).squeeze(1)
    return (-((1 - log_p.exp()) ** gamma) * log_p).mean()


EXPERIMENT ='''
CALLBACKS = """    from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor

    # val_loss never improves by 10: stops after the second epoch
    return [LearningRateMonitor(logging_interval="step"), EarlyStopping("val_loss", min_delta=10.0, patience=0)]
"""


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    return copy_repository(tmp_path_factory.mktemp("own-recipe") / "repo")


def own_project(clone, name: str, source: str, edits: dict) -> None:
    make_in_clone(clone, "new-project", f"NAME={name}", f"FROM={source}")
    script = clone / "projects" / name / "train.py"
    text = script.read_text()
    for old, new in edits.items():
        assert text.count(old) == 1, old  # the project's train.py still reads as the test expects
        text = text.replace(old, new)
    script.write_text(text)


def train_killed_then_resumed(clone, project: str, out, flags: list, resume_flags: list):
    """Trained with SIGKILL just after its first mid-epoch checkpoint, then --resume: the run directory."""
    command = [sys.executable, clone / "projects" / project / "train.py", "train", "--out", out, *flags]
    env = {**os.environ, "PYTHONPATH": str(clone / "src")}  # its own eurosat package, the rest as every other run
    run_dir = kill_after_first_checkpoint(command, out, cwd=clone, env=env)
    in_clone(clone, sys.executable, clone / "projects" / project / "train.py", "train", "--resume", run_dir, *resume_flags)
    return run_dir


def test_a_project_replaces_the_loss_and_the_optimizer_in_its_own_train_py(clone, sample_dir, tmp_path):
    own_project(
        clone,
        "eurosat-focal",
        "eurosat-amp",
        {
            "loss_fn, augment = recipe.training_loss(config), recipe.make_augment(config)": "loss_fn, augment = "
            "focal_loss, recipe.make_augment(config)",
            "optimizer = recipe.make_optimizer(core, config, proc.device)": "optimizer = "
            'torch.optim.RMSprop(core.parameters(), lr=config["lr"])',
            "\n\nEXPERIMENT =": FOCAL,
        },
    )  # fmt: skip
    assert in_clone(clone, "git", "status", "--porcelain", "src").stdout == ""  # nothing shared changed
    flags = ["--data", sample_dir, *PACED, "--epochs", "2", "--deterministic", "--checkpoint-every", "4", "--sched", "cosine"]
    script = clone / "projects" / "eurosat-focal" / "train.py"
    in_clone(clone, sys.executable, script, "train", "--out", tmp_path / "whole", *flags)
    whole = single_run_dir(tmp_path / "whole")
    killed = train_killed_then_resumed(clone, "eurosat-focal", tmp_path / "killed", flags, ["--epochs", "2"])
    assert without_timings(read_metrics(killed)) == without_timings(read_metrics(whole))
    assert_same_weights(killed / "last.ckpt", whole / "last.ckpt")

    checkpoint = torch.load(whole / "last.ckpt", weights_only=False)
    assert "square_avg" in next(iter(checkpoint["optimizer"]["state"].values()))  # RMSprop's, not Adam's
    assert checkpoint["scheduler"]["last_epoch"] == 2 * 27  # the shared schedule still steps
    provenance = json.loads((killed / "provenance.json").read_text())
    assert len(provenance["resumes"]) == 1 and json.loads((killed / "config.json").read_text())["project"] == "eurosat-focal"
    evaluation = json.loads((killed / "evaluation.json").read_text())
    assert evaluation["samples"] == 108 and evaluation["checkpoint"] == str(killed / "best.ckpt")
    # the loss is the project's: at a learning rate of 1e-30 the weights stay where they start, and so on every
    # batch the focal loss is below the cross-entropy the shared loss gives (both over the same batches)
    still = ["--data", sample_dir, *SMALL, "--epochs", "1", "--deterministic", "--lr", "1e-30"]
    in_clone(clone, sys.executable, script, "train", "--out", tmp_path / "focal", *still)
    run_project("eurosat-amp", "train", "--out", tmp_path / "cross-entropy", *still)
    focal, cross_entropy = (read_metrics(single_run_dir(tmp_path / name))[0] for name in ("focal", "cross-entropy"))
    assert focal["val_loss"] == pytest.approx(cross_entropy["val_loss"])  # the same weights validated
    assert focal["loss"] < 0.95 * cross_entropy["loss"]


def test_a_lightning_project_adds_its_own_callbacks_and_the_run_keeps_working(clone, sample_dir, tmp_path):
    own_project(
        clone,
        "eurosat-callbacks",
        "eurosat-lightning",
        {
            '''    """Lightning callbacks of this project's own (LearningRateMonitor, EarlyStopping, ...): none by default."""
    return []
''': CALLBACKS
        },
    )
    flags = ["--data", sample_dir, *PACED, "--epochs", "4", "--deterministic", "--checkpoint-every", "4"]
    flags += ["--sched", "cosine", "--warmup-epochs", "0.5"]
    script = clone / "projects" / "eurosat-callbacks" / "train.py"
    in_clone(clone, sys.executable, script, "train", "--out", tmp_path / "whole", *flags)
    whole = single_run_dir(tmp_path / "whole")
    assert [record["epoch"] for record in read_metrics(whole)] == [1, 2]  # EarlyStopping ended it
    killed = train_killed_then_resumed(clone, "eurosat-callbacks", tmp_path / "killed", flags, ["--epochs", "4"])
    assert without_timings(read_metrics(killed)) == without_timings(read_metrics(whole))
    assert_same_weights(killed / "last.ckpt", whole / "last.ckpt")
    assert_same_weights(killed / "best.ckpt", whole / "best.ckpt")
    assert json.loads((killed / "evaluation.json").read_text())["samples"] == 108

    # LearningRateMonitor wrote the schedule's learning rates into the run's CSV log, through Lightning's logger
    with open(whole / "csv" / "metrics.csv") as rows:
        rates = {int(row["step"]): float(row["lr-Adam"]) for row in csv.DictReader(rows) if row.get("lr-Adam")}
    config = json.loads((whole / "config.json").read_text())
    assert len(rates) >= 5
    assert rates == pytest.approx({step: 1e-3 * recipe.lr_factor(step, 27, config) for step in rates})

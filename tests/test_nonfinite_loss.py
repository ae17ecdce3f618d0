"""A run whose loss is gone stops: one line naming the epoch and the step, a non-zero exit, and no checkpoint of
weights the non-finite loss reached. Both projects, in this process."""

import pytest
import torch
import torch.nn.functional as F
from helpers import MODEL, PROJECTS, main_in_process, single_run_dir

from eurosat.sample import write_sample

# 432 training images at batch 16: 27 steps an epoch
ARGS = ["--model", MODEL, "--batch-size", "16", "--epochs", "2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("nonfinite") / "eurosat"
    write_sample(path, fraction=0.02)
    return path


def assert_stopped_at(result, epoch: int, step: int):
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith(f"error: epoch {epoch} step {step}: the training loss is not finite (nan or inf)"), line
    assert "lower --lr" in line and "--precision" in line
    return line


@pytest.mark.parametrize("project", PROJECTS)
def test_a_nan_loss_stops_the_run_and_keeps_the_last_finite_checkpoint(project, data, tmp_path, monkeypatch):
    """The loss of training step 6 turns NaN (as a diverging run's would); a checkpoint was written at step 4."""
    cross_entropy, training_steps = F.cross_entropy, []

    def nan_from_step_6(logits, labels, *args, **kwargs):
        loss = cross_entropy(logits, labels, *args, **kwargs)
        if torch.is_grad_enabled():
            training_steps.append(1)
            if len(training_steps) >= 6:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(F, "cross_entropy", nan_from_step_6)
    result = main_in_process(project, "train", "--data", data, "--out", tmp_path, *ARGS, "--checkpoint-every", "4", check=False)
    run_dir = single_run_dir(tmp_path)
    line = assert_stopped_at(result, 1, 6)
    assert f"the checkpoints in {run_dir} hold the last finite weights" in line
    assert len(training_steps) <= 10  # found within the 10 steps between two checks, not at the epoch's end
    assert not (run_dir / "best.ckpt").exists() and "Epoch 1/2 loss" not in result.stdout  # no epoch finished
    checkpoint = torch.load(run_dir / "last.ckpt", weights_only=False)
    weights = checkpoint.get("state_dict") or checkpoint["model"]
    assert all(torch.isfinite(tensor).all() for tensor in weights.values() if tensor.is_floating_point())
    assert checkpoint.get("step", checkpoint.get("global_step")) == 4  # the step-4 checkpoint, not a later one


@pytest.mark.parametrize("project", PROJECTS)
def test_a_learning_rate_that_diverges_stops_within_the_first_steps(project, data, tmp_path):
    result = main_in_process(project, "train", "--data", data, "--out", tmp_path, *ARGS, "--lr", "1e30", check=False)
    line = assert_stopped_at(result, 1, int(result.stderr.split(" step ")[1].split(":")[0]))
    assert "(now 1e+30)" in line and "no checkpoint was written" in line
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("lr", ["1e39", "nan", "inf", "-0.1", "1e-300"])
def test_a_learning_rate_float32_cannot_hold_is_one_line(lr, data, tmp_path):
    result = main_in_process(PROJECTS[0], "train", "--data", data, "--out", tmp_path, "--lr", lr, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"argument --lr: {lr} must be a positive number float32 holds (1.18e-38 to 3.4e+38)" in result.stderr
    assert not list(tmp_path.iterdir())

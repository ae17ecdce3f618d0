"""A run whose loss is gone stops: one line naming the epoch and the step, a non-zero exit, and no checkpoint of
weights the non-finite loss reached. Both projects, in this process; and in two processes, where one rank's loss
is gone and the other's is not yet."""

import os
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import DDP_ARGS, MODEL, PROJECTS, main_in_process, run, single_run_dir

from eurosat import manifest
from eurosat.sample import write_sample

# 432 training images at batch 16: 27 steps an epoch
ARGS = ["--model", MODEL, "--batch-size", "16", "--epochs", "2", "--no-pretrained"]


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


# Loaded by every process of the run below through PYTHONPATH: from training step 3 on, rank 1's loss is NaN
NAN_ON_RANK_1 = """
import torch
import torch.nn.functional as F

cross_entropy, training_steps = F.cross_entropy, []


def nan_on_rank_1(logits, labels, *args, **kwargs):
    loss = cross_entropy(logits, labels, *args, **kwargs)
    if torch.is_grad_enabled() and torch.distributed.is_initialized() and torch.distributed.get_rank() == 1:
        training_steps.append(1)
        if len(training_steps) >= 3:
            return loss * float("nan")
    return loss


F.cross_entropy = nan_on_rank_1
"""


@pytest.mark.slow
@pytest.mark.parametrize("project", PROJECTS)
def test_a_nan_loss_on_one_rank_stops_every_rank_at_its_step(project, sample_dir, tmp_path):
    """Two processes as the manifest launches them; only rank 1's loss turns NaN, at its step 3. Rank 0's own loss
    is NaN only from step 4 (the all-reduced gradients carry it over), so the line naming step 3 says that the ranks
    agreed on the first non-finite step of any rank; and both stop, neither waits for the other."""
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(NAN_ON_RANK_1)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "inject"), os.environ.get("PYTHONPATH", "")])}
    launch = manifest.load(project).launch(2, sys.executable)
    result = run(*launch, "--data", sample_dir, "--out", tmp_path / "runs", *DDP_ARGS, env=env, check=False, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and lines[0].startswith("error: epoch 1 step 3: the training loss is not finite"), lines
    assert "Epoch 1/1 loss" not in result.stdout and not list((tmp_path / "runs").rglob("best.ckpt"))

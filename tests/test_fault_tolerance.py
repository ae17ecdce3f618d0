"""Killed, stopped or out of space mid-training, every project resumes to the same result as an uninterrupted run.

Real training processes, real signals (SIGKILL, SIGTERM, SIGINT) and a real kernel limit on file size
(RLIMIT_FSIZE set on the running process, which makes the next checkpoint write fail the way a full disk does).
"""

import json
import random
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import PACED, PROJECTS, REPO, assert_same_weights, read_metrics, run_project, single_run_dir, without_timings

from eurosat.runs import resolve_resume

pytestmark = pytest.mark.slow
# 432 training images at batch 16: 27 steps an epoch, a checkpoint every 4 of them
ARGS = [*PACED, "--epochs", "2", "--deterministic", "--checkpoint-every", "4"]


def start(project, *args) -> subprocess.Popen:
    command = [sys.executable, REPO / "projects" / project / "train.py", *args]
    return subprocess.Popen([str(c) for c in command], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(condition, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"training ended before the kill point:\n{process.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.02)


def wait_until_resumed(process: subprocess.Popen, run_dir, resumes: int) -> None:
    """Until the resumed process has recorded its start in provenance.json (the checkpoint is restored, the first
    step is next): it is the `resumes`-th resume of the run."""

    def recorded() -> bool:
        try:
            return len(json.loads((run_dir / "provenance.json").read_text()).get("resumes", [])) >= resumes
        except (OSError, ValueError):  # not written yet
            return False

    wait_for(recorded, process)


def checkpoint_position(path) -> tuple[int, int]:
    """(epochs done, batches done in the next epoch), from plain PyTorch's or Lightning's checkpoint."""
    checkpoint = torch.load(path, weights_only=False)
    if "loops" in checkpoint:
        (loader,) = checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]
        done = loader["batches_done"]
        return (loader["epoch"] + 1, 0) if done == 27 else (loader["epoch"], done)
    return checkpoint["epoch"], checkpoint["step"]


def assert_same_run(run_dir, reference) -> None:
    history = read_metrics(run_dir)
    assert [r["epoch"] for r in history] == [1, 2]  # no duplicated or missing epoch lines
    assert without_timings(history) == without_timings(read_metrics(reference))
    assert_same_weights(run_dir / "last.ckpt", reference / "last.ckpt")


# A project's tests on one pytest-xdist worker, so that its uninterrupted run is trained once
@pytest.fixture(scope="module", params=[pytest.param(p, marks=pytest.mark.xdist_group(f"resume-{p}")) for p in PROJECTS])
def uninterrupted(request, sample_dir, tmp_path_factory):
    """(project, the run directory of its uninterrupted run)."""
    out = tmp_path_factory.mktemp(f"uninterrupted-{request.param}")
    run_project(request.param, "train", "--data", sample_dir, "--out", out, *ARGS)
    return request.param, single_run_dir(out)


def test_kill_9_at_several_points_then_resume_equals_uninterrupted(sample_dir, tmp_path, uninterrupted):
    project, uninterrupted = uninterrupted
    rng = random.Random()
    seed = rng.randrange(10**6)
    rng.seed(seed)
    print(f"kill delays drawn with seed {seed}")
    out = tmp_path / "runs"
    process = start(project, "train", "--data", sample_dir, "--out", out, *ARGS)
    wait_for(lambda: out.exists() and any(out.glob("*/last.ckpt")), process)
    run_dir = single_run_dir(out)
    kill_points = [
        lambda: True,  # just after the first mid-epoch checkpoint
        lambda: (run_dir / "metrics.jsonl").exists() and len(read_metrics(run_dir)) >= 1,  # about an epoch end
    ]
    killed_at = []
    for resumes, kill_point in enumerate(kill_points, start=1):
        wait_for(kill_point, process)
        time.sleep(rng.uniform(0, 0.8))
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL
        _, resumed_from, _ = resolve_resume(run_dir)  # a kill between save_checkpoint's renames leaves last.prev.ckpt
        killed_at.append(checkpoint_position(resumed_from))
        process = start(project, "train", "--resume", run_dir, "--epochs", "2")
        wait_until_resumed(process, run_dir, resumes)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    print(f"last checkpoints (epoch, step) at the kills: {killed_at}")
    assert any(step for _, step in killed_at)  # at least one kill came mid-epoch
    assert_same_run(run_dir, uninterrupted)


# SIGTERM comes twice under Slurm (to every process of the step, and from torchrun to its workers): still one stop
@pytest.mark.parametrize(("signum", "times", "status"), [(signal.SIGTERM, 2, 143), (signal.SIGINT, 1, 130)])
def test_stop_signal_writes_a_checkpoint_and_exits_cleanly(sample_dir, tmp_path, uninterrupted, signum, times, status):
    project, uninterrupted = uninterrupted
    process = start(project, "train", "--data", sample_dir, "--out", tmp_path, *ARGS)
    wait_for(lambda: any(tmp_path.glob("*/last.ckpt")), process)  # step 4 of 27 in epoch 1
    for _ in range(times):
        process.send_signal(signum)
        time.sleep(0.05)
    _, stderr = process.communicate(timeout=120)
    run_dir = single_run_dir(tmp_path)
    assert process.returncode == status, stderr
    assert "Traceback" not in stderr
    assert f"stopped by {signum.name} at epoch 1 step " in stderr
    assert f"continue with --resume {run_dir}" in stderr
    epoch, step = checkpoint_position(run_dir / "last.ckpt")
    assert epoch == 0 and 0 < step < 27
    if signum == signal.SIGTERM:  # the checkpoint is written the same way for either signal: one resume is proof
        run_project(project, "train", "--resume", run_dir, "--epochs", "2")
        assert_same_run(run_dir, uninterrupted)


def test_out_of_space_mid_training_keeps_the_previous_checkpoint(sample_dir, tmp_path, uninterrupted):
    project, uninterrupted = uninterrupted
    process = start(project, "train", "--data", sample_dir, "--out", tmp_path, *ARGS)
    wait_for(lambda: any(tmp_path.glob("*/last.ckpt")), process)
    run_dir = single_run_dir(tmp_path)
    size = (run_dir / "last.ckpt").stat().st_size
    resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (size // 2, size // 2))  # the next checkpoint cannot fit
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, stderr
    (line,) = stderr.strip().splitlines()[-1:]
    assert line.startswith(f"error: cannot write checkpoint {run_dir / 'last.ckpt'} (File too large)"), stderr
    assert line.endswith(f"then continue with --resume {run_dir} ({run_dir / 'last.ckpt'} holds the last checkpoint written)")
    assert "Traceback" not in stderr
    epoch, step = checkpoint_position(run_dir / "last.ckpt")  # intact and loadable
    assert step > 0
    assert not list(run_dir.glob(".*.tmp-*"))  # no half-written file left behind
    run_project(project, "train", "--resume", run_dir, "--epochs", "2")
    assert_same_run(run_dir, uninterrupted)

"""Every project as a user starts it, in real processes: the command line, its provenance, two processes on one
machine launched the way its manifest says (torchrun, or the framework's own launcher), each project's profiler."""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import (
    DDP_ARGS,
    PACED,
    PROJECTS,
    REPO,
    SMALL,
    check_two_process_run,
    read_metrics,
    run,
    run_project,
    single_run_dir,
    without_timings,
)

from eurosat import manifest
from eurosat.timeline import Timeline

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("project", PROJECTS)
def test_command_line_run_records_what_ran(project, sample_dir, tmp_path):
    result = run_project(project, "--data", sample_dir, "--out", tmp_path, "--epochs", "1", *SMALL)  # train: the default
    run_dir = single_run_dir(tmp_path)
    assert "Epoch 1/1 loss " in result.stdout and "Traceback" not in result.stderr
    for noise in ("litlogger", "`weights_only` was not set", "LeafSpec"):  # Lightning's, silenced at the source
        assert noise not in result.stdout + result.stderr
    timeline = json.loads((run_dir / "metrics.json").read_text())["timeline"]  # from this process's own start
    assert 0 < timeline["data_ready_s"] <= timeline["first_step_s"] <= timeline["finished_s"] < 600
    assert Timeline.line(timeline) in result.stdout
    record = json.loads((run_dir / "provenance.json").read_text())
    assert record["versions"]["torch"] and record["versions"]["timm"] and record["versions"]["pytorch_lightning"]
    assert len(record["git"]["commit"]) == 40 and isinstance(record["git"]["dirty"], bool)
    assert f"projects/{project}/train.py" in " ".join(record["command"]) and "--epochs" in record["command"]
    assert "in_container" in record["container"]


@pytest.mark.parametrize("project", PROJECTS)
def test_two_processes_count_every_validation_sample_once(project, sample_dir, tmp_path):
    """And print once: the warning about a stray file comes from rank 0 alone, under torchrun (RANK) and under
    Lightning's own launcher (LOCAL_RANK, no RANK) alike."""
    data = tmp_path / "eurosat"
    shutil.copytree(sample_dir, data)
    (data / "Forest" / "notes.txt").write_text("not an image")
    launch = manifest.load(project).launch(2, sys.executable)
    result = run(*launch, "--data", data, "--out", tmp_path / "runs", *DDP_ARGS)
    check_two_process_run(result, tmp_path / "runs")
    assert result.stderr.count("warning: skipped 1 file(s) in the class folders of ") == 1, result.stderr[-3000:]


PROFILERS = [("eurosat-amp", ["--profile"], "profile/*.json"), ("eurosat-lightning", ["--profiler", "simple"], "*profile*.txt")]


@pytest.mark.parametrize(("project", "flags", "pattern"), PROFILERS)
def test_profiler_writes_its_report(project, flags, pattern, sample_dir, tmp_path):
    run_project(project, "train", "--data", sample_dir, "--out", tmp_path, "--epochs", "1", *flags, *SMALL)
    assert list(single_run_dir(tmp_path).glob(pattern))


def parent_pids() -> dict[int, int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    return parents


def descendants(launcher_pid: int) -> list[int]:
    parents = parent_pids()
    children = [pid for pid, parent in parents.items() if parent == launcher_pid]
    return [pid for child in children for pid in (child, *descendants(child))]


def rank_one(launcher_pid: int) -> int:
    """The process of local rank 1 among the launcher's descendants (torchrun's worker, or Lightning's child)."""
    parents = parent_pids()

    def local_rank_one(pid: int) -> bool:
        with contextlib.suppress(OSError):
            return b"LOCAL_RANK=1" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        return False

    def descends(pid: int) -> bool:
        while pid in parents and pid != launcher_pid:
            pid = parents[pid]
        return pid == launcher_pid

    (pid,) = [pid for pid in parents if descends(pid) and local_rank_one(pid) and not local_rank_one(parents[pid])]
    return pid


@pytest.mark.parametrize("project", PROJECTS)
def test_a_lost_peer_ends_the_run_with_one_line(project, sample_dir, tmp_path):
    launch = manifest.load(project).launch(2, sys.executable)
    args = ["--data", sample_dir, "--out", tmp_path, "--epochs", "3", "--checkpoint-every", "2", *PACED]
    process = subprocess.Popen(
        [str(a) for a in [*launch, *args]], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not any(tmp_path.glob("*/last.ckpt")):
            assert process.poll() is None and time.monotonic() < deadline, "training never wrote a checkpoint"
            time.sleep(0.05)
        os.kill(rank_one(process.pid), signal.SIGKILL)
        _, stderr = process.communicate(timeout=180)
    finally:
        process.kill()
    assert process.returncode != 0
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert lines and lines[0].startswith("error: lost another training process (a node or rank stopped): "), stderr[-3000:]
    assert f"continue from the last checkpoint with --resume {single_run_dir(tmp_path)}" in lines[0]


# Lightning's launcher, as it runs in rank 0 with one rank it started: that rank ends with status 3 at once
WATCHED = """
import subprocess, sys, time
from pathlib import Path
from lightning_fabric.strategies.launchers import subprocess_script
from eurosat.lifecycle import Run
from eurosat.lightning_run import report_lost_ranks

report_lost_ranks(Run("eurosat-lightning", {}, None, None, Path(sys.argv[1])))
subprocess_script._launch_process_observer([subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])])
time.sleep(60)
"""


def test_lightnings_watch_over_its_ranks_says_the_lost_peer_line_before_it_kills_rank_0(tmp_path):
    """Lightning's launcher SIGKILLs rank 0 within 5 s of another rank's death, often before a collective fails in
    rank 0: the line comes from its watch then, once, and names the rank and the run directory."""
    result = run(sys.executable, "-c", WATCHED, tmp_path, check=False, timeout=60)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    expected = r"error: lost another training process \(a node or rank stopped\): rank 1 \(PID \d+\) ended by exit status 3; "
    expected += f"continue from the last checkpoint with --resume {re.escape(str(tmp_path))}"
    assert len(lines) == 1 and re.fullmatch(expected, lines[0]), result.stderr[-3000:]


@pytest.mark.parametrize("project", PROJECTS)
def test_sigterm_to_every_process_stops_every_rank_at_one_checkpoint(project, sample_dir, tmp_path):
    """What Slurm does (scancel --signal=TERM, --signal=TERM@N): every process of the job step gets SIGTERM, the
    launcher included, and torchrun then passes it on to its workers a second time."""
    launch = manifest.load(project).launch(2, sys.executable)
    args = ["--epochs", "1", "--checkpoint-every", "2", "--deterministic", *PACED]  # stopped within its one epoch
    out = tmp_path / "stopped"
    process = subprocess.Popen(
        [str(a) for a in [*launch, "--data", sample_dir, "--out", out, *args]],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not any(out.glob("*/last.ckpt")):
            assert process.poll() is None and time.monotonic() < deadline, "training never wrote a checkpoint"
            time.sleep(0.05)
        for pid in [process.pid, *descendants(process.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=180)
    finally:
        process.kill()
    run_dir = single_run_dir(out)
    assert process.returncode != 0
    (stopped,) = [line for line in stderr.splitlines() if line.startswith("stopped by SIGTERM at epoch 1 ")]
    assert stopped.endswith(f"continue with --resume {run_dir}"), stderr[-3000:]
    assert "[rank" not in stderr and "Error" not in stderr, stderr[-3000:]  # no rank failed on its way out
    run(*launch, "--resume", run_dir, "--epochs", "1")  # the same two processes; the checkpoint has both ranks' totals
    run(*launch, "--data", sample_dir, "--out", tmp_path / "whole", *args)
    whole = without_timings(read_metrics(single_run_dir(tmp_path / "whole")))
    # (a resumed epoch sums its loss in another order: equal to float32 rounding)
    assert without_timings(read_metrics(run_dir)) == [pytest.approx(record, rel=1e-6) for record in whole]
